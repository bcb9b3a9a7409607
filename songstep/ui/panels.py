"""Optional panels, shown only when their feature is installed in this build:

* timed lyrics (LRC) and the lyric-alignment score of a take, when
  `songstep.pipeline.lyrics_timing` is importable;
* a LoRA adapter panel (load, scale, on/off, unload), when `songstep.lora` is importable.

Both act on the loaded pipeline while holding its worker's lock, so they never overlap a job.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import gradio as gr


def available(module: str) -> bool:
    """Whether `module` is part of this songstep package (a finder that maps names to another
    checkout, such as an editable install of a different tree, does not count)."""
    import songstep

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    return origin is not None and any(origin.is_relative_to(Path(p).resolve()) for p in songstep.__path__)


HAS_LRC = available("songstep.pipeline.lyrics_timing")
HAS_LORA = available("songstep.lora")


# -- timed lyrics ---------------------------------------------------------------------------------
def take_panels(ui) -> dict[str, Any]:
    if not HAS_LRC:
        return {}
    with gr.Accordion(ui.t("lrc"), open=False, elem_id="lrc-panel"):
        with gr.Row():
            take = gr.Dropdown([(str(i + 1), i) for i in range(len(ui.takes))], value=0, label=ui.t("take", n="", seed="")
                               .split("·")[0].strip())
            button = gr.Button(ui.t("lrc_button"), size="sm")
        lrc = gr.Textbox(label="LRC", lines=6, interactive=False, buttons=["copy"])
        score = gr.JSON(label="score")
    return {"take": take, "button": button, "lrc": lrc, "score": score}


def take_outputs(ui) -> list[Any]:
    return [ui.panels["lrc"], ui.panels["score"]] if ui.panels else []


def take_reset(ui) -> dict[Any, Any]:
    return {ui.panels["lrc"]: "", ui.panels["score"]: None} if ui.panels else {}


def _align(ui, index: int, info: list[dict]):
    from songstep.ui.messages import error_text

    try:
        if index is None or index >= len(info):
            raise ValueError("generate a take first")
        take = info[int(index)]
        timing = importlib.import_module("songstep.pipeline.lyrics_timing")
        with ui.jobs.lock:
            found = timing.align_audio(ui.jobs.pipe, take["file"], take["lyrics"], language=take["language"],
                                       caption=take["caption"], score=True)
        return found.lrc, found.score, gr.update()
    except Exception as exc:  # shown in the page, never a trace
        return "", None, error_text(exc, ui.lang)


# -- LoRA -----------------------------------------------------------------------------------------
def lora_panel(ui) -> dict[str, Any]:
    if not HAS_LORA:
        return {}
    with gr.Accordion(ui.t("lora"), open=False, elem_id="lora-panel"):
        with gr.Row():
            path = gr.Textbox(label=ui.t("lora_path"), scale=3)
            scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label=ui.t("lora_scale"))
            enabled = gr.Checkbox(True, label=ui.t("lora_enabled"))
        with gr.Row():
            load = gr.Button(ui.t("lora_load"), size="sm")
            apply = gr.Button(ui.t("lora_apply"), size="sm")
            unload = gr.Button(ui.t("lora_unload"), size="sm")
        state = gr.JSON(label="adapters")
    return {"path": path, "scale": scale, "enabled": enabled, "load": load, "apply": apply, "unload": unload,
            "state": state}


def _lora(ui, action: str, path: str, scale: float, enabled: bool):
    from songstep.ui.messages import error_text

    try:
        lora = importlib.import_module("songstep.lora")
        dit = ui.jobs.pipe.components.dit
        with ui.jobs.lock:
            if action == "load":
                if not (path or "").strip():
                    raise ValueError("give an adapter file or folder")
                lora.load_adapter(dit, path.strip(), scale=float(scale))
            elif action == "apply":
                lora.set_scale(dit, float(scale))
                lora.set_enabled(dit, bool(enabled))
            else:
                lora.unload(dit)
            return lora.status(dit), gr.update()
    except Exception as exc:  # shown in the page, never a trace
        return gr.update(), error_text(exc, ui.lang)


def wire(ui) -> None:
    if ui.panels:
        p = ui.panels
        p["button"].click(lambda i, info: _align(ui, i, info), [p["take"], ui.take_info],
                          [p["lrc"], p["score"], ui.status])
    if ui.lora:
        p = ui.lora
        for action in ("load", "apply", "unload"):
            p[action].click(lambda path, s, e, a=action: _lora(ui, a, path, s, e),
                            [p["path"], p["scale"], p["enabled"]], [p["state"], ui.status])

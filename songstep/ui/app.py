"""The Gradio Blocks app: Simple and Custom modes, the task selector, advanced settings, one
player per take with its spectrogram and metadata, "use as source", the session's history.

The UI only builds requests (`songstep.ui.controls`) and submits them to the job queue
(`songstep.ui.jobs`); the server's worker runs them. Errors are shown in the status box as
readable text, never as a stack trace.

    app = create_ui_app(pipe, ServerSettings(data_dir="songstep-data"), api=False, lang="en")
    uvicorn.run(app, host="127.0.0.1", port=7860)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from songstep.audio import AUDIO_FORMATS
from songstep.constants import LANGUAGES, MAX_BATCH, TIME_SIGNATURES, TRACK_NAMES
from songstep.errors import SongstepError
from songstep.server.store import SUCCEEDED, QueueFull
from songstep.ui import controls, panels
from songstep.ui.i18n import t
from songstep.ui.jobs import Jobs, host_app
from songstep.ui.messages import error_text
from songstep.ui.results import spectrogram_file, take_metadata

log = logging.getLogger(__name__)
MAX_TAKES = MAX_BATCH
SOURCE_TASKS = tuple(n for n in controls.UI_TASKS if controls.visible("source_audio", n))
PROGRESS = gr.Progress()  # gradio gives each event its own tracker through this marker default
KEYS = ("",) + tuple(f"{n}{a} {m}" for n in "CDEFGAB" for a in ("", "#", "b") for m in ("major", "minor"))


@dataclass
class TakeView:
    group: Any
    title: Any
    audio: Any
    image: Any
    meta: Any
    use: Any


class SongstepUI:
    def __init__(self, jobs: Jobs, lang: str = "en"):
        controls.check_controls()
        self.jobs, self.lang = jobs, lang
        self.c: dict[str, Any] = {}  # request-bound controls by field name
        self.takes: list[TakeView] = []

    def t(self, key: str, **values: Any) -> str:
        return t(key, self.lang, **values)

    # -- layout ------------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        with gr.Blocks(title=self.t("title"), analytics_enabled=False) as demo:
            gr.Markdown(f"## {self.t('title')}")
            self.mode = gr.State("custom")
            with gr.Row():
                with gr.Column(scale=3):
                    self._modes()
                    self._advanced()
                    self.go = gr.Button(self.t("generate"), variant="primary", elem_id="generate")
                    self.status = gr.Markdown(self.t("idle"), elem_id="status")
                with gr.Column(scale=4):
                    self._results()
            self.lora = panels.lora_panel(self)
            self._wire()
        return demo

    def _modes(self) -> None:
        lang_choices = [("—", "unknown")] + [(c, c) for c in LANGUAGES if c != "unknown"]
        with gr.Tabs(selected="custom") as self.tabs:
            with gr.Tab(self.t("mode_custom"), id="custom") as self.custom_tab:
                self.task = gr.Radio([(self.t(f"task_{n}"), n) for n in controls.UI_TASKS], value="text2music",
                                     label=self.t("task"), elem_id="task")
                self._task_inputs()
                self._song_inputs(lang_choices)
            with gr.Tab(self.t("mode_simple"), id="simple") as self.simple_tab:
                if not self.jobs.has_planner:
                    gr.Markdown(f"**{self.t('no_planner')}**", elem_id="no-planner")
                self.desc = gr.Textbox(label=self.t("description"), lines=2, elem_id="description")
                self.simple_instr = gr.Checkbox(label=self.t("instrumental"))
                self.simple_lang = gr.Dropdown(lang_choices, value="unknown", label=self.t("language"))

    def _task_inputs(self) -> None:
        c, show = self.c, lambda name: controls.visible(name, "text2music")
        c["source_audio"] = gr.Audio(type="filepath", sources=["upload"], label=self.t("source_audio"),
                                     visible=show("source_audio"), elem_id="source-audio")
        with gr.Row():
            c["strength"] = self._slider("strength", step=0.05)
            c["cover_noise_strength"] = self._slider("cover_noise_strength", step=0.05)
            c["repaint_strength"] = self._slider("repaint_strength", step=0.05)
            c["repaint_start"] = gr.Number(controls.default("repaint_start"), label=self.t("repaint_start"),
                                           visible=show("repaint_start"), elem_id="repaint-start")
            c["repaint_end"] = self._optional("repaint_end", visible=show("repaint_end"))
        c["tracks"] = gr.Dropdown(list(TRACK_NAMES), multiselect=True, label=self.t("tracks"),
                                  info=controls.help_text("tracks"), visible=show("tracks"), elem_id="tracks")

    def _song_inputs(self, lang_choices) -> None:
        c = self.c
        c["caption"] = gr.Textbox(label=self.t("caption"), lines=2, elem_id="caption")
        c["lyrics"] = gr.Textbox(label=self.t("lyrics"), lines=6, elem_id="lyrics",
                                 placeholder="[Verse]\n…\n[Chorus]\n…")
        with gr.Row():
            c["instrumental"] = gr.Checkbox(label=self.t("instrumental"), elem_id="instrumental")
            c["language"] = gr.Dropdown(lang_choices, value="unknown", label=self.t("language"))
        with gr.Row():
            c["duration"] = self._optional("duration")
            c["bpm"] = self._optional("bpm")
            c["keyscale"] = gr.Dropdown(list(KEYS), value="", label=self.t("keyscale"), allow_custom_value=True)
            c["timesignature"] = gr.Dropdown([""] + list(TIME_SIGNATURES), value="", label=self.t("timesignature"))
        c["reference_audio"] = gr.Audio(type="filepath", sources=["upload"], label=self.t("reference_audio"),
                                        elem_id="reference-audio")

    def _optional(self, name: str, **kw: Any):
        """An optional number: a one-line text box, empty = the request's default."""
        return gr.Textbox("", label=self.t(name), info=controls.help_text(name), placeholder="auto", max_lines=1,
                          elem_id=name.replace("_", "-"), **kw)

    def _slider(self, name: str, step: float, **kw: Any):
        lo, hi = controls.bounds(name)
        return gr.Slider(lo, hi, value=controls.default(name), step=step, label=self.t(name),
                         info=controls.help_text(name), visible=controls.visible(name, "text2music"),
                         elem_id=name.replace("_", "-"), **kw)

    def _advanced(self) -> None:
        c = self.c
        from songstep.sampling.guidance import GUIDANCE
        from songstep.sampling.solvers import SOLVERS

        with gr.Accordion(self.t("advanced"), open=False, elem_id="advanced"):
            gr.Textbox(self.jobs.variant, label=self.t("variant"), interactive=False)
            with gr.Row():
                c["steps"] = self._optional("steps")
                c["shift"] = self._optional("shift")
                c["guidance"] = self._optional("guidance")
            with gr.Row():
                c["guidance_method"] = gr.Dropdown(list(GUIDANCE), value="apg", label=self.t("guidance_method"))
                c["cfg_start"] = gr.Number(0.0, label=self.t("cfg_start"))
                c["cfg_end"] = gr.Number(1.0, label=self.t("cfg_end"))
                c["solver"] = gr.Dropdown(list(SOLVERS), value="euler", label=self.t("solver"))
            with gr.Row():
                c["seed"] = gr.Number(-1, label=self.t("seed"), precision=0, elem_id="seed")
                c["batch"] = self._slider("batch", step=1)
                self.fmt = gr.Dropdown(list(AUDIO_FORMATS), value="mp3", label=self.t("format"), elem_id="format")
            with gr.Group():
                self.think = gr.Checkbox(self.jobs.has_planner, label=f"{self.t('lm')}: {self.t('thinking')}",
                                         interactive=self.jobs.has_planner)
                c["use_cot_caption"] = gr.Checkbox(True, label=self.t("use_cot_caption"))
                with gr.Row():
                    c["lm_temperature"] = self._slider("lm_temperature", step=0.05)
                    c["lm_cfg_scale"] = self._slider("lm_cfg_scale", step=0.1)
                    c["lm_top_p"] = self._slider("lm_top_p", step=0.01)
                    c["lm_top_k"] = gr.Number(0, label=self.t("lm_top_k"), precision=0)

    def _results(self) -> None:
        gr.Markdown(f"### {self.t('results')}")
        for _ in range(MAX_TAKES):
            with gr.Group(visible=False, elem_classes=["songstep-take"]) as group:
                title = gr.Markdown(elem_classes=["take-title"])
                player = gr.Audio(type="filepath", interactive=False, show_label=False, buttons=["download"],
                                  waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                                  elem_classes=["take-audio"])  # a plain <audio controls> player
                image = gr.Image(type="numpy", format="png", label=self.t("spectrogram"), interactive=False,
                                 elem_classes=["take-spectrogram"], height=160)
                with gr.Accordion(self.t("metadata"), open=False):
                    meta = gr.JSON()
                use = gr.Button(self.t("use_as_source"), size="sm", elem_classes=["use-as-source"])
            self.takes.append(TakeView(group, title, player, image, meta, use))
        self.take_files = gr.State([])
        self.take_info = gr.State([])
        self.panels = panels.take_panels(self)
        self.history = gr.State([])
        self.history_table = gr.Dataframe(headers=["time", "task", "caption", "seeds", "job"], label=self.t("history"),
                                          interactive=False, elem_id="history")

    # -- events -------------------------------------------------------------------------------------
    def _wire(self) -> None:
        self.custom_tab.select(lambda: "custom", None, self.mode)
        self.simple_tab.select(lambda: "simple", None, self.mode)
        task_bound = [n for n in self.c if controls.tasks_of(n) != controls.UI_TASKS]  # from the fields' x-tasks
        self.task.change(self._on_task, self.task, [self.c[n] for n in task_bound])
        self._task_bound = task_bound
        inputs = {self.mode, self.task, self.desc, self.simple_instr, self.simple_lang, self.fmt, self.think,
                  self.history, *self.c.values()}
        outputs = [self.status, self.take_files, self.take_info, self.history, self.history_table]
        for v in self.takes:
            outputs += [v.group, v.title, v.audio, v.image, v.meta]
        outputs += panels.take_outputs(self)
        self.go.click(self.generate, inputs, outputs, concurrency_limit=None)
        for i, v in enumerate(self.takes):
            v.use.click(self._use_as_source(i), [self.take_files, self.task],
                        [self.c["source_audio"], self.task, self.tabs, self.mode, self.status])
        panels.wire(self)

    def _on_task(self, task: str):
        return [gr.update(visible=controls.visible(n, task)) for n in self._task_bound]

    def _use_as_source(self, i: int):
        def use(files: list[str], task: str):
            if i >= len(files):
                return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
            new_task = task if task in SOURCE_TASKS else "repaint"
            note = self.t("source_loaded", n=i + 1, task=self.t(f"task_{new_task}"))
            return files[i], new_task, gr.Tabs(selected="custom"), "custom", note
        return use

    # -- generation --------------------------------------------------------------------------------
    def _request(self, data: dict, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(request fields, worker options) from the form; uploads checked and staged."""
        values = {name: data[comp] for name, comp in self.c.items()}
        options: dict[str, Any] = {"audio_format": data[self.fmt], "thinking": bool(data[self.think])}
        task = data[self.task]
        if data[self.mode] == "simple":
            if not self.jobs.has_planner:
                raise SongstepError(self.t("no_planner"))
            if not (data[self.desc] or "").strip():
                raise SongstepError(self.t("need_description"))
            task = "text2music"
            for name in controls.SONG_FIELDS + controls.TASK_FIELDS:
                values.pop(name, None)
            values.update(instrumental=data[self.simple_instr], language=data[self.simple_lang])
            options.update(sample_mode=True, sample_query=data[self.desc].strip())
        fields = controls.request_fields(task, values)
        controls.validate(fields)
        for name in ("source_audio", "reference_audio"):
            if fields.get(name):
                fields[name] = self.jobs.stage_audio(fields[name], job_id, name)
        return fields, options

    def generate(self, data: dict, progress=PROGRESS):
        started = time.monotonic()
        yield {self.status: self.t("submitting")}
        try:
            job_id = self.jobs.new_id()
            fields, options = self._request(data, job_id)
            self.jobs.submit(fields, options, job_id)
            shown = None
            for view in self.jobs.wait(job_id):
                if view.status == "queued":
                    text = self.t("queued", pos=view.position)
                elif view.status == "running":
                    progress(view.progress, desc=view.stage or "…")
                    text = self.t("running", stage=view.stage or "…", pct=round(100 * view.progress))
                else:
                    break
                if text != shown:  # only changes travel to the page
                    shown = text
                    yield {self.status: text}
            job = view.job
            if job.status != SUCCEEDED:
                raise SongstepError(job.error or job.status)
            yield self._show(job, fields, data[self.history], time.monotonic() - started)
        except Exception as exc:  # every failure becomes a message in the page
            if not isinstance(exc, SongstepError | QueueFull | ValueError):
                log.exception("UI generation failed")
            message = error_text(exc, self.lang)
            gr.Warning(message.replace("<br>", "\n").replace("**", ""))
            yield {self.status: message}

    def _show(self, job, fields: dict[str, Any], history: list, seconds: float) -> dict:
        files = [str(p) for p in self.jobs.files(job)]
        result = job.result or {}
        out: dict[Any, Any] = {}
        for i, v in enumerate(self.takes):
            shown = i < len(files)
            out[v.group] = gr.update(visible=shown)
            if shown:
                seed = result["seeds"][i]
                out[v.title] = f"**{self.t('take', n=i + 1, seed=seed)}**"
                out[v.audio] = files[i]
                out[v.image] = spectrogram_file(files[i])
                out[v.meta] = take_metadata(job, i, fields)
        info = [{"file": f, "lyrics": result.get("lyrics", ""), "caption": result.get("caption", ""),
                 "language": fields.get("language", "unknown")} for f in files]
        row = [time.strftime("%H:%M:%S"), fields["task"], (result.get("caption") or "")[:60],
               ", ".join(str(s) for s in result.get("seeds", [])), job.id[:8]]
        history = [row, *history]
        out.update({self.status: self.t("done", n=len(files), seconds=f"{seconds:.1f}"), self.take_files: files,
                    self.take_info: info, self.history: history, self.history_table: history})
        out.update(panels.take_reset(self))
        return out


def key_login(hashes: tuple[str, ...]):
    """Gradio's login check: any user name, an API key as the password (None: no login)."""
    if not hashes:
        return None
    from songstep.server.auth import key_matches

    return lambda user, password: key_matches(password, hashes)


def create_ui_app(pipe: Any, settings, *, api: bool = False, lang: str = "en", auth_hashes: tuple[str, ...] = ()):
    """The FastAPI app with the UI mounted at `/` (and the REST routes too with `api=True`).
    With `auth_hashes`, the UI asks for a login whose password is one of the API keys."""
    app = host_app(pipe, settings, api=api)
    jobs = Jobs(app, pipe)
    ui = SongstepUI(jobs, lang)
    blocks = ui.build()
    app.state.ui = ui
    return gr.mount_gradio_app(app, blocks, path="", allowed_paths=[str(settings.data_dir)], auth=key_login(auth_hashes),
                               auth_message="password: an API key of this server", ssr_mode=False,
                               show_error=False, footer_links=[])

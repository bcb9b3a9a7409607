"""The contract between songstep and the reference data in `tests/fixtures/reference/`.

`run_prompt_case(case_input)` (defined in `prompt_cases.py`) returns the prompt fields of one
`prompts.json` case. `run_case(golden_dir, case)` runs one case of `golden_dir/index.json` with songstep's code, using
only the index entry and the case's `in.*` tensors, and returns every `out.*` tensor the case
declares (and `traj.*` where cheap). Nothing here is keyed to a case's name, seed or shape: the kind
of a case is read from its recorded call (or, failing that, from the tensors it declares).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from songstep.loading.checkpoint import load_dit
from songstep.models.dit import DiTModel
from songstep.testing.prompt_cases import run_prompt_case  # noqa: F401  (the contract's prompt half)
from songstep.testing.reference_alignment import AlignmentCase, run_alignment, run_alignment_case
from songstep.testing.reference_sampling import run_flowedit_case as _run_flowedit
from songstep.testing.reference_sampling import run_generate_case as _run_generate

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_index(golden_dir: Path) -> dict[str, Any]:
    return json.loads((Path(golden_dir) / "index.json").read_text(encoding="utf-8"))


def case_entry(index: dict[str, Any], case: str) -> dict[str, Any]:
    for entry in index["cases"]:
        if entry["case"] == case:
            return entry
    raise KeyError(f"case {case!r} not in index (have: {', '.join(e['case'] for e in index['cases'])})")


def case_kind(entry: dict[str, Any]) -> str:
    """encoder | decoder | fsq | prepare_condition | generate | flowedit | alignment."""
    call = str(entry.get("args", {}).get("call", ""))
    for needle, kind in (
        ("lyric_alignment", "alignment"),
        ("flowedit_generate_audio", "flowedit"),
        ("generate_audio", "generate"),
        ("prepare_condition", "prepare_condition"),
        ("tokenize", "fsq"),
        ("model.decoder", "decoder"),
        ("model.encoder", "encoder"),
    ):
        if needle in call:
            return kind
    names = set(entry["tensors"])
    if "out.lrc.calc_matrix" in names or "out.score.components" in names:
        return "alignment"
    if "tensor_args" in entry.get("args", {}) or "out.target_latents" in names:
        return "flowedit" if "in.target_text_hidden_states" in names else "generate"
    for marker, kind in (
        ("out.velocity_r_eq_t", "decoder"),
        ("out.indices", "fsq"),
        ("out.context_latents", "prepare_condition"),
        ("out.encoder_hidden_states", "encoder"),
    ):
        if marker in names:
            return kind
    raise ValueError(f"cannot tell what case {entry['case']!r} calls")


def checkpoint_dir(golden_dir: Path, index: dict[str, Any]) -> Path:
    return Path(golden_dir).parent.parent / index["tiny_checkpoint"]["dir"]


def load_case_model(golden_dir: Path, index: dict[str, Any]) -> DiTModel:
    dtype = _DTYPES[index.get("dtype", "float32")]
    return load_dit(checkpoint_dir(golden_dir, index), device=index.get("device", "cpu"), dtype=dtype)


def load_inputs(golden_dir: Path, entry: dict[str, Any], dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """The case's `in.*` tensors; floating ones in the case's dtype."""
    data = load_file(str(Path(golden_dir) / entry["file"]))
    return {
        k[3:]: (v.to(dtype) if v.is_floating_point() else v).to(device)
        for k, v in data.items()
        if k.startswith("in.")
    }


def run_case(golden_dir: Path, case: str) -> dict[str, torch.Tensor]:
    """Every `out.*` (and `traj.*`) tensor the case declares, computed by songstep."""
    return run_case_detailed(golden_dir, case)[0]


def run_case_detailed(golden_dir: Path, case: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(outputs, noise drawn by songstep from the case's seeds under the fixtures' `in.*` names)."""
    golden_dir = Path(golden_dir)
    index = load_index(golden_dir)
    entry = case_entry(index, case)
    kind = case_kind(entry)
    model = load_case_model(golden_dir, index)
    inputs = load_inputs(golden_dir, entry, model.dtype, index.get("device", "cpu"))
    drawn: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        out = _RUNNERS[kind](model, inputs, entry, index, drawn)
    declared = {k for k in entry["tensors"] if k.startswith(("out.", "traj."))}
    return {k: v for k, v in out.items() if k in declared}, drawn


def run_alignment_details(golden_dir: Path, case: str) -> AlignmentCase:
    """An alignment case's tensors together with its LRC text, lines, token texts and scores."""
    golden_dir = Path(golden_dir)
    index = load_index(golden_dir)
    entry = case_entry(index, case)
    model = load_case_model(golden_dir, index)
    inputs = load_inputs(golden_dir, entry, model.dtype, index.get("device", "cpu"))
    with torch.inference_mode():
        return run_alignment(model, inputs, entry)


# -- kinds -------------------------------------------------------------------------------
_ENCODER_INPUTS = (
    "text_hidden_states",
    "text_attention_mask",
    "lyric_hidden_states",
    "lyric_attention_mask",
    "refer_audio_acoustic_hidden_states_packed",
    "refer_audio_order_mask",
)


def _run_encoder(model: DiTModel, x: dict, entry: dict, index: dict, drawn: dict) -> dict[str, torch.Tensor]:
    enc = model.encoder
    h, m = enc(*(x[k] for k in _ENCODER_INPUTS))
    timbre, timbre_mask = enc.timbre_encoder(
        x["refer_audio_acoustic_hidden_states_packed"], x["refer_audio_order_mask"], x["text_hidden_states"].shape[0]
    )
    return {
        "out.encoder_hidden_states": h,
        "out.encoder_attention_mask": m,
        "out.text_projected": enc.text_projector(x["text_hidden_states"]),
        "out.lyric_encoder_last_hidden_state": enc.lyric_encoder(x["lyric_hidden_states"], x["lyric_attention_mask"]),
        "out.timbre_embs_unpacked": timbre,
        "out.timbre_embs_mask": timbre_mask,
    }


def _run_decoder(model: DiTModel, x: dict, entry: dict, index: dict, drawn: dict) -> dict[str, torch.Tensor]:
    def velocity(r: torch.Tensor) -> torch.Tensor:
        return model.decoder(
            x["hidden_states"], x["timestep"], r, x["encoder_hidden_states"], x["context_latents"]
        )

    out = {"out.velocity_r_eq_t": velocity(x["timestep"])}
    if "timestep_r" in x:
        out["out.velocity_r_given"] = velocity(x["timestep_r"])
    return out


def _run_fsq(model: DiTModel, x: dict, entry: dict, index: dict, drawn: dict) -> dict[str, torch.Tensor]:
    q, idx, pmask = model.tokenize(x["x"], x["silence_latent"], x["attention_mask"])
    padded, _ = model._pad_to_window(x["x"], x["silence_latent"], x["attention_mask"])
    n, t, c = padded.shape
    w = model.config.pool_window_size
    q2 = model.tokenizer.quantizer.get_output_from_indices(idx)
    return {
        "out.pooled": model.tokenizer.pool(padded.view(n, t // w, w, c)),
        "out.quantized": q,
        "out.indices": idx,
        "out.pooled_mask": pmask,
        "out.detokenized": model.detokenize(q),
        "out.quantized_from_indices": q2,
        "out.detokenized_from_indices": model.detokenize(q2),
    }


def _run_prepare_condition(model: DiTModel, x: dict, entry: dict, index: dict, drawn: dict) -> dict[str, torch.Tensor]:
    src = x["src_latents"]
    enc, mask, ctx = model.prepare_condition(
        *(x[k] for k in _ENCODER_INPUTS),
        hidden_states=x.get("hidden_states", src),
        attention_mask=x.get("attention_mask", torch.ones(src.shape[:2], dtype=src.dtype)),
        silence_latent=x["silence_latent"],
        src_latents=src,
        chunk_masks=x["chunk_masks"],
        is_covers=x["is_covers"],
        precomputed_lm_hints_25Hz=x.get("precomputed_lm_hints_25Hz"),
    )
    return {"out.encoder_hidden_states": enc, "out.encoder_attention_mask": mask, "out.context_latents": ctx}


_RUNNERS = {
    "encoder": _run_encoder,
    "decoder": _run_decoder,
    "fsq": _run_fsq,
    "prepare_condition": _run_prepare_condition,
    "generate": _run_generate,
    "flowedit": _run_flowedit,
    "alignment": run_alignment_case,
}

"""Reference cases of kind "alignment" (`tests/fixtures/reference/alignment/<family>/`): lyric
timestamps and the DiT lyric-alignment score from the saved encoder states, latents and ids.

Only the index entry and the case's `in.*` tensors are read: the model config's
`lyric_alignment_layers_config` is the case's (`args`; else the checkpoint's own, else the 2 B
default), the cross-attention q/k norm weights are scaled by `args.cross_attn_qk_norm_scale`, and
token texts are decoded from `id_bytes` (UTF-8 with replacement, like the tokenizer's decode).
Two decoder passes as the reference makes them: timestamps at t = 1/steps (batch 1), score at
[t = 1 on pure noise, t = 1/steps] (batch 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from songstep import alignment
from songstep.models.dit import DiTModel


@dataclass
class AlignmentCase:
    """Everything a case checks: its tensors and the texts and scores that are not tensors."""

    tensors: dict[str, torch.Tensor]
    lrc_text: str
    lines: list[alignment.LyricLine]
    tokens: list[alignment.TokenTime]
    scores: dict[str, alignment.ScoreParts]
    noise: torch.Tensor


def byte_decoder(id_bytes: dict[str, str]):
    """decode(ids) from each id's hex bytes: joined, UTF-8, invalid bytes → U+FFFD."""
    table = {int(k): bytes.fromhex(v) for k, v in id_bytes.items()}

    def decode(ids) -> str:
        return b"".join(table[int(i)] for i in ids).decode("utf-8", errors="replace")

    return decode


def scale_cross_qk_norms(model: DiTModel, scale: float) -> None:
    if scale == 1.0:
        return
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.cross_attn.q_norm.weight.mul_(scale)
            layer.cross_attn.k_norm.weight.mul_(scale)


def case_heads(model: DiTModel, entry: dict[str, Any]) -> list[tuple[int, int]]:
    value = entry.get("args", {}).get("lyric_alignment_layers_config")
    if value is None:
        value = model.config.extra.get("lyric_alignment_layers_config")
    cfg = model.config
    return alignment.select_heads(alignment.resolve_heads(value), cfg.num_hidden_layers, cfg.num_attention_heads)


def _pass(model: DiTModel, x: torch.Tensor, t: list[float], enc: torch.Tensor, ctx: torch.Tensor, pairs) -> dict:
    tt = torch.tensor(t, dtype=x.dtype, device=x.device)
    b = x.shape[0]
    return model.decoder.cross_attention_probs(
        x, tt, tt, enc.expand(b, -1, -1), ctx.expand(b, -1, -1), {layer for layer, _ in pairs}
    )


def run_alignment(model: DiTModel, x: dict[str, torch.Tensor], entry: dict[str, Any]) -> AlignmentCase:
    args = entry["args"]
    scale_cross_qk_norms(model, float(args.get("cross_attn_qk_norm_scale", 1.0)))
    pairs = case_heads(model, entry)
    if not pairs:
        raise ValueError("no valid attention heads in lyric_alignment_layers_config for this model")
    x1, enc, ctx = x["pred_latent"], x["encoder_hidden_states"], x["context_latents"]
    noise = torch.randn(x1.shape, generator=torch.Generator("cpu").manual_seed(int(args["seed"])), dtype=x1.dtype)
    t = 1.0 / int(args["inference_steps"])
    xt = t * noise + (1.0 - t) * x1
    ids = x["lyric_token_ids"][0].tolist()
    rows = alignment.lyric_rows(ids, len(entry["header_ids"]))
    pure = ids[rows]
    decode = byte_decoder(entry["id_bytes"])
    lrc_maps = _pass(model, xt, [t], enc, ctx, pairs)
    attn = alignment.stack_heads({k: v[0] for k, v in lrc_maps.items()}, pairs, rows)
    duration = args.get("total_duration_seconds")
    duration = x1.shape[1] / 25.0 if duration is None else float(duration)
    tokens, mats, path = alignment.align_tokens(attn, pure, duration, decode)
    lines = alignment.lyric_lines(tokens, decode)
    score_maps = _pass(model, torch.cat([noise, xt]), [1.0, t], enc, ctx, pairs)
    singles = [decode([i]) for i in pure]
    out = {
        "out.lrc.attn": attn,
        "out.lrc.vis_matrix": mats["vis"],
        "out.lrc.energy_matrix": mats["energy"],
        "out.lrc.calc_matrix": mats["calc"],
        "out.lrc.path": torch.from_numpy(path),
        "out.lrc.token_start": torch.tensor([tk.start for tk in tokens], dtype=torch.float64),
        "out.lrc.token_end": torch.tensor([tk.end for tk in tokens], dtype=torch.float64),
    }
    scores = {}
    for half, name in ((0, "lm"), (1, "dit")):
        a = alignment.stack_heads({k: v[half] for k, v in score_maps.items()}, pairs, rows)
        parts = alignment.score_alignment(a, singles)
        scores[name] = parts
        out[f"out.score.attn_{name}"] = a
        out[f"out.score.energy_{name}"] = torch.from_numpy(parts.matrices["energy"])
        out[f"out.score.calc_{name}"] = torch.from_numpy(parts.matrices["calc"])
        out[f"out.score.path_{name}"] = torch.from_numpy(parts.matrices["path"])
    out["out.score.type_mask"] = torch.from_numpy(scores["dit"].matrices["type_mask"])
    out["out.score.components"] = torch.tensor(
        [[p.coverage, p.monotonicity, p.confidence, p.raw] for p in (scores["lm"], scores["dit"])], dtype=torch.float64
    )
    return AlignmentCase(out, alignment.format_lrc(lines), lines, tokens, scores, noise)


def run_alignment_case(model: DiTModel, x: dict, entry: dict, index: dict, drawn: dict) -> dict[str, torch.Tensor]:
    """The `run_case` runner: the case's tensors; the redrawn seed-42 noise goes to `drawn`."""
    result = run_alignment(model, x, entry)
    drawn["in.noise"] = result.noise
    return result.tensors


__all__ = ["AlignmentCase", "byte_decoder", "run_alignment", "run_alignment_case"]

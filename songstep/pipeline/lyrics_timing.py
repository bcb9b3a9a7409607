"""Lyric timestamps (LRC, WebVTT) and the lyric-alignment score for generated or existing songs.

One extra DiT decoder pass per take reads the lyric cross-attention: the take's latents x1 are
noised to t = 1/steps with seed-42 noise drawn on the DiT's device (`x_t = t·noise + (1 − t)·x1`), the decoder runs up to the
last layer that the checkpoint's `lyric_alignment_layers_config` names (the 2 B default
{2: [6], 3: [10, 11], 4: [3], 5: [8, 9], 6: [8]} when the config has none) and the selected heads'
maps are aligned (`songstep.alignment`). The score adds a second, batched pass of [pure noise at
t = 1 ("lm" score), the same x_t ("dit" score)]. The conditions are rebuilt from the request as
generation built them (same prompts, same take seed).

Lyrics go through the same prompt and the same 2048-token limit as generation (the prompt is
truncated, its end-of-text token kept): lines past the limit were never seen by the DiT and get no
timestamps; the result says so (`truncated`). No lyrics or `[Instrumental]` is an
`InvalidRequest`: there is nothing to align.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from songstep import alignment
from songstep.constants import (
    ENDOFTEXT,
    LATENT_RATE,
    LYRICS_MAX_TOKENS,
    MAX_DURATION,
    MIN_DURATION,
    SAMPLE_RATE,
)
from songstep.errors import InvalidRequest
from songstep.pipeline.components import Components
from songstep.pipeline.inputs import load_wave, prepare
from songstep.pipeline.plan import resolve
from songstep.prompts import INSTRUMENTAL_LYRICS
from songstep.request import GenerationRequest

log = logging.getLogger(__name__)

NOISE_SEED = 42
_ITEM_FIELDS = ("caption", "bpm", "keyscale", "timesignature", "duration", "language", "audio_codes")


@dataclass
class LyricAlignment:
    """One take's lyric timing: per-token and per-line times (seconds), the LRC and WebVTT texts,
    and (when asked) the alignment score: `lm_score` from pure noise at t = 1, `dit_score` from
    the take at t = 1/steps, each cov² · mono² · conf in [0, 1] with its components."""

    tokens: list[alignment.TokenTime]
    lines: list[alignment.LyricLine]
    lrc: str
    vtt: str
    duration: float
    heads: list[tuple[int, int]]
    truncated: bool = False
    score: dict[str, Any] | None = None
    matrices: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": [{"text": ln.text, "start": ln.start, "end": ln.end} for ln in self.lines],
            "lrc": self.lrc,
            "duration": self.duration,
            "heads": [list(h) for h in self.heads],
            "truncated": self.truncated,
            "score": self.score,
        }


def nothing_to_align(request: GenerationRequest) -> str | None:
    """Why a request has no lyrics to align, or None when it has some."""
    lyrics = (request.lyrics or "").strip()
    if request.instrumental or not lyrics:
        return "nothing to align: the request has no lyrics (instrumental)"
    if lyrics.lower() == INSTRUMENTAL_LYRICS.lower():
        return f"nothing to align: the lyrics are {INSTRUMENTAL_LYRICS}"
    return None


def alignment_heads(components: Components) -> list[tuple[int, int]]:
    cfg = components.dit.config
    resolved = alignment.resolve_heads(cfg.extra.get("lyric_alignment_layers_config"))
    pairs = alignment.select_heads(resolved, cfg.num_hidden_layers, cfg.num_attention_heads)
    if not pairs:
        raise InvalidRequest(
            f"this DiT ({cfg.num_hidden_layers} layers × {cfg.num_attention_heads} heads) has no lyric-alignment "
            f"head: its config.json's lyric_alignment_layers_config ({resolved}) names none that exists"
        )
    return pairs


def take_request(result, request: GenerationRequest, take: int) -> GenerationRequest:
    """The request as take `take` of `result` ran it (a planner's caption, metas and codes)."""
    items = result.params.get("items") or []
    item = items[take] if take < len(items) else {}
    return request.replace(**{k: item[k] for k in _ITEM_FIELDS if item.get(k) is not None})


@dataclass
class _Inputs:
    x1: torch.Tensor  # [1, T, 64]
    enc: torch.Tensor  # [1, L, E]
    ctx: torch.Tensor  # [1, T, 128]
    ids: list[int]
    rows: slice
    truncated: bool


def _lyric_ids(components: Components, prompt: str) -> tuple[list[int], int, int, bool]:
    """(ids as generation saw them, header token count, end-of-text id, truncated?)."""
    tok = components.text.tokenizer
    ids = components.text.token_ids(prompt, LYRICS_MAX_TOKENS)
    full = len(tok(prompt, split_special_tokens=False)["input_ids"])
    header = prompt.split("# Lyric\n", 1)[0] + "# Lyric\n"
    header_len = len(tok.encode(header, add_special_tokens=False))
    end_id = tok.convert_tokens_to_ids(ENDOFTEXT)
    return ids, header_len, end_id if isinstance(end_id, int) and end_id >= 0 else alignment.LYRIC_END_ID, full > len(ids)


def _inputs(components: Components, request: GenerationRequest, seed: int, latents: torch.Tensor) -> _Inputs:
    c = components
    plan = resolve(request.replace(batch=1), c.dit.config, c.variant, seeds=[int(seed)])
    prep = prepare(c, plan)
    enc, ctx = prep.inputs.condition(c.dit)
    x1 = latents.reshape(1, -1, latents.shape[-1]).to(device=ctx.device, dtype=ctx.dtype)
    if ctx.shape[1] < x1.shape[1]:
        raise InvalidRequest(f"latents have {x1.shape[1]} frames but the request plans {ctx.shape[1]}")
    ids, header_len, end_id, truncated = _lyric_ids(c, prep.prompts["lyrics_prompt"])
    rows = alignment.lyric_rows(ids, header_len, end_id)
    if rows.stop <= rows.start:
        raise InvalidRequest("nothing to align: the lyrics have no tokens")
    if truncated:
        log.warning("lyrics longer than the %d-token lyric limit: generation saw only the first %d lyric tokens, "
                    "so only those are aligned", LYRICS_MAX_TOKENS, rows.stop - rows.start)
    return _Inputs(x1, enc, ctx[:, : x1.shape[1]], ids, rows, truncated)


def _maps(components: Components, x: torch.Tensor, t: list[float], inp: _Inputs, pairs) -> list[dict]:
    b = x.shape[0]
    tt = torch.tensor(t, dtype=x.dtype, device=x.device)
    with components.on_device("dit"), torch.no_grad():
        maps = components.dit.decoder.cross_attention_probs(
            x, tt, tt, inp.enc.expand(b, -1, -1), inp.ctx.expand(b, -1, -1), {layer for layer, _ in pairs}
        )
    return [{k: v[i].float().cpu() for k, v in maps.items()} for i in range(b)]


def align_latents(
    components: Components,
    latents: torch.Tensor,
    request: GenerationRequest,
    *,
    seed: int,
    steps: int,
    duration: float | None = None,
    score: bool = True,
) -> LyricAlignment:
    """Align one take: `latents` [T, 64] (or [1, T, 64]) made from `request` with take seed
    `seed`; `steps` = the sampler's step count (t = 1/steps); `duration` defaults to T / 25 s."""
    reason = nothing_to_align(request)
    if reason:
        raise InvalidRequest(reason)
    pairs = alignment_heads(components)
    inp = _inputs(components, request, seed, latents)
    dev = inp.x1.device if inp.x1.device.type in ("cpu", "cuda") else torch.device("cpu")  # as upstream: MPS draws on CPU
    gen = torch.Generator(device=dev).manual_seed(NOISE_SEED)
    noise = torch.randn(inp.x1.shape, generator=gen, device=dev, dtype=inp.x1.dtype).to(inp.x1.device)
    t = 1.0 / int(steps)
    xt = t * noise + (1.0 - t) * inp.x1
    duration = inp.x1.shape[1] / LATENT_RATE if duration is None else float(duration)
    tok = components.text.tokenizer

    def decode(ids) -> str:
        return tok.decode(list(ids), skip_special_tokens=False)

    pure = inp.ids[inp.rows]
    attn = alignment.stack_heads(_maps(components, xt, [t], inp, pairs)[0], pairs, inp.rows)
    tokens, mats, _ = alignment.align_tokens(attn, pure, duration, decode)
    lines = alignment.lyric_lines(tokens, decode)
    result = LyricAlignment(tokens, lines, alignment.format_lrc(lines), alignment.format_vtt(lines, duration),
                            duration, pairs, inp.truncated, None, {"attn": attn, **mats})
    if score:
        halves = _maps(components, torch.cat([noise, xt]), [1.0, t], inp, pairs)
        singles = [decode([i]) for i in pure]
        parts = {name: alignment.score_alignment(alignment.stack_heads(m, pairs, inp.rows), singles)
                 for name, m in zip(("lm", "dit"), halves)}
        result.score = {f"{n}_score": p.score for n, p in parts.items()} | {
            n: {"coverage": p.coverage, "monotonicity": p.monotonicity, "confidence": p.confidence} for n, p in parts.items()
        }
    return result


def align_result(pipe, result, request: GenerationRequest, take: int = 0, *, score: bool = True) -> LyricAlignment:
    """Align take `take` of a `GenerationResult` made by `pipe` from `request`; `result` may also
    be that take's latents [T, 64] (then the take seed is `request.seed`, else 0)."""
    if isinstance(result, torch.Tensor):
        latents, req, seed, duration = result, request, request.seed or 0, None
    elif result.latents is None:
        raise InvalidRequest("the result keeps no latents to align")
    else:
        latents, req = result.latents[take], take_request(result, request, take)
        seed, duration = result.seeds[take], result.duration
    steps = resolve(req, pipe.components.dit.config, pipe.components.variant).sampler.steps
    with pipe._lock:
        return align_latents(pipe.components, latents, req, seed=seed, steps=steps, duration=duration, score=score)


def align_audio(pipe, source, lyrics: str, *, language: str = "unknown", caption: str = "", steps: int | None = None,
                score: bool = True) -> LyricAlignment:
    """Align an existing song (a file or a [2, samples] 48 kHz tensor): VAE-encode it (posterior
    mean), condition as a text2music request with these lyrics, one pass, align."""
    request = GenerationRequest(caption=caption, lyrics=lyrics, language=language)
    reason = nothing_to_align(request)
    if reason:
        raise InvalidRequest(reason)
    c = pipe.components
    wave = load_wave(source)
    with pipe._lock:
        with c.on_device("vae"), torch.no_grad():
            latents = c.vae.encode(wave[None], None, sample=False)[0]
        frames = latents.shape[0]
        if frames == 0 or frames > MAX_DURATION * LATENT_RATE:
            raise InvalidRequest(f"the audio is {wave.shape[1] / SAMPLE_RATE:.2f} s; alignment needs 0.04–{MAX_DURATION:g} s")
        # plans ≥ frames (at least the shortest song a request may ask for: a shorter clip is aligned
        # against the first frames of a 10 s plan)
        request = request.replace(duration=max(MIN_DURATION, -(-(frames + 1) * 10 // LATENT_RATE) / 10))
        steps = steps or resolve(request, c.dit.config, c.variant).sampler.steps
        return align_latents(c, latents, request, seed=0, steps=steps, duration=wave.shape[1] / SAMPLE_RATE,
                             score=score)


def write_lyric_files(audio_path: str | Path, result: LyricAlignment) -> tuple[Path, Path]:
    """Write `<name>.lrc` and `<name>.vtt` beside the audio (atomically); returns their paths."""
    audio_path = Path(audio_path)
    paths = audio_path.with_suffix(".lrc"), audio_path.with_suffix(".vtt")
    for path, text in zip(paths, (result.lrc + "\n", result.vtt)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths


def sidecar_fields(result: LyricAlignment, *, lrc: bool, score: bool) -> dict[str, Any]:
    """What a take's sidecar gains: `lyric_alignment` (heads, truncation, line times when LRC was
    asked for) and `lyric_score` (lm_score, dit_score and their components)."""
    out: dict[str, Any] = {"lyric_alignment": {"heads": [list(h) for h in result.heads], "truncated": result.truncated}}
    if lrc:
        out["lyric_alignment"]["lines"] = result.to_dict()["lines"]
    if score and result.score is not None:
        out["lyric_score"] = result.score
    return out


__all__ = [
    "LyricAlignment",
    "align_audio",
    "align_latents",
    "align_result",
    "alignment_heads",
    "nothing_to_align",
    "sidecar_fields",
    "take_request",
    "write_lyric_files",
]

"""The two planning phases as functions over a `Planner`.

Phase 1 writes the CoT metadata block (no CFG, grammar-constrained, user values forced); phase 2
writes the audio codes (CFG, newest prompt layout, code-row head, exact code count). Every item
of a batch is its own decode row with its own generator, so item i of a batch seeded N plans
exactly like a batch of one seeded N+i.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from songstep.constants import AUDIO_CODE_TOKEN, CODE_RATE
from songstep.models.lm import AudioCodeVocab, head_columns
from songstep.planner.types import (
    UNKNOWN_LANGUAGE,
    PlannerHost,
    PlanOptions,
    valid_bpm,
    valid_duration,
    valid_keyscale,
    valid_language,
    valid_text,
    valid_timesignature,
)
from songstep.prompts import (
    INSTRUMENTAL_LYRICS,
    LMOutput,
    audio_code_ids,
    build_phase1_prompt,
    build_phase2_prompt,
    format_cot,
    parse_lm_output,
    user_cot_metadata,
)
from songstep.request import GenerationRequest, normalize_timesignature
from songstep.sampling.flow import ProgressFn
from songstep.sampling.grammar import CodeConstraint, MetadataSpec, target_codes
from songstep.sampling.lm import DecodeRow, SamplingParams, decode

logger = logging.getLogger(__name__)

PLANNED_FIELDS = ("bpm", "keyscale", "timesignature", "duration")


def lm_lyrics(request: GenerationRequest) -> str:
    """The lyrics the LM reads: `[Instrumental]` for an instrumental request, else the request's
    (the same rule as the DiT's lyric prompt)."""
    return INSTRUMENTAL_LYRICS if request.instrumental else request.lyrics


def codes_duration(request: GenerationRequest) -> float | None:
    """The length the request's own audio codes fix (0.2 s per code), if it has codes."""
    count = len(audio_code_ids(request.audio_codes or ""))
    return count / CODE_RATE if count else None


def user_metadata(request: GenerationRequest) -> dict[str, Any]:
    """The user's metas as the CoT holds them (forced by the grammar, never overwritten): bpm,
    keyscale, timesignature (`N/4` → `N`), duration (int seconds; the user's codes' length when
    they give codes but no duration) and a language other than `unknown` (upstream leaves the
    language out; here a given language is kept too)."""
    ts = normalize_timesignature(request.timesignature) if request.timesignature else None
    duration = request.duration if request.duration is not None else codes_duration(request)
    out = user_cot_metadata(request.bpm, request.keyscale, ts, duration)
    language = (request.language or "").strip()
    if language and language != UNKNOWN_LANGUAGE:
        out["language"] = language
    return out


def missing_fields(request: GenerationRequest) -> list[str]:
    """The planned metas (bpm, keyscale, timesignature, duration) the request leaves blank (the
    duration is not blank when the request carries codes: they fix the length)."""
    out = []
    for name in PLANNED_FIELDS:
        value = getattr(request, name)
        if value is None or (isinstance(value, str) and not value.strip()):
            out.append(name)
    if "duration" in out and codes_duration(request) is not None:
        out.remove("duration")
    return out


def sampling(opts: PlanOptions, *, cfg: bool) -> SamplingParams:
    return SamplingParams(
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        repetition_penalty=opts.repetition_penalty,
        cfg_scale=opts.cfg_scale if cfg else 1.0,
    )


def run_phase1(
    planner: PlannerHost, request: GenerationRequest, generators: Sequence[torch.Generator], opts: PlanOptions,
    progress: ProgressFn | None = None,
) -> list[tuple[str, LMOutput]]:
    """Phase 1 for every item: (raw text, parsed output). Stops at the end of the metadata block
    (no `</think>`); CFG is never applied here."""
    prompt = planner.encode_prompt(build_phase1_prompt(request.caption, lm_lyrics(request)))
    spec = MetadataSpec(
        user_values=user_metadata(request),
        skip_caption=not opts.use_cot_caption,
        skip_language=not opts.use_cot_language,
        max_duration=int(planner.max_duration_for(opts)),
        ending="eos",
        caption_max_tokens=planner.caption_max_tokens,
    )
    rows = [
        DecodeRow(prompt, constraint=planner.metadata_constraint(spec, opts.constrained), generator=gen)
        for gen in generators
    ]
    lm = planner.lm
    results = decode(
        lm.backend, rows, sampling(opts, cfg=False), eos_id=lm.eos_id, pad_id=lm.pad_id,
        max_new_tokens=planner.cot_token_cap(opts.constrained, opts.max_new_tokens), progress=progress,
    )
    texts = [planner.decode_text(r.tokens) for r in results]
    return [(text, parse_lm_output(text)) for text in texts]


def merge_metadata(
    user: dict[str, Any], out: LMOutput | None, opts: PlanOptions, max_duration: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(CoT metadata for phase 2, what the LM contributed). LM values outside the allowed sets
    are dropped (unconstrained output may hold anything); the user's values win."""
    lm: dict[str, Any] = {}
    if out is not None:
        found = {
            "bpm": valid_bpm(out.bpm),
            "duration": valid_duration(out.duration, max_duration),
            "keyscale": valid_keyscale(out.keyscale),
            "timesignature": valid_timesignature(out.timesignature),
            "caption": valid_text(out.caption) if opts.use_cot_caption else None,
            "language": valid_language(out.language) if opts.use_cot_language else None,
        }
        lm = {k: v for k, v in found.items() if v is not None}
    return {**lm, **user}, lm


def fill_request(
    request: GenerationRequest, metadata: dict[str, Any], lm: dict[str, Any], opts: PlanOptions, seed: int, codes: str
) -> GenerationRequest:
    """The request with its blank metas filled from the CoT (user values are never replaced),
    the CoT caption (CaptionRewrite), the CoT language when propagated, and the codes."""
    changes: dict[str, Any] = {"batch": 1, "seed": seed}
    for name in missing_fields(request):
        if name in metadata:
            value = metadata[name]
            changes[name] = {"bpm": int, "duration": float}.get(name, str)(value)
    if "caption" in lm:
        changes["caption"] = lm["caption"]
    if opts.propagate_language and request.language in ("", UNKNOWN_LANGUAGE) and "language" in lm:
        changes["language"] = lm["language"]
    if codes:
        changes["audio_codes"] = codes
    return request.replace(**changes)


def code_target(request: GenerationRequest, metadata: dict[str, Any], opts: PlanOptions) -> int | None:
    """`int(duration × 5)` for the user's duration; else the CoT duration's when enforced; else
    free (None)."""
    if request.duration is not None and request.duration > 0:
        return target_codes(float(request.duration))
    if opts.enforce_cot_duration and metadata.get("duration"):
        return target_codes(float(metadata["duration"]))
    return None


def codes_text(codes: AudioCodeVocab, tokens: Sequence[int]) -> str:
    return "".join(AUDIO_CODE_TOKEN.format(codes.code(t)) for t in tokens)


def _phase2_prompts(planner: PlannerHost, request: GenerationRequest, cot: str, opts: PlanOptions):
    caption, lyrics = request.caption, lm_lyrics(request)
    cond = planner.encode_prompt(build_phase2_prompt(caption, lyrics, cot, legacy=opts.legacy_prompts))
    if opts.cfg_scale == 1.0:
        return cond, None
    uncond = build_phase2_prompt(
        caption, lyrics, cot, unconditional=True, negative_prompt=opts.negative_prompt, legacy=opts.legacy_prompts
    )
    return cond, planner.encode_prompt(uncond)


def run_phase2(
    planner: PlannerHost,
    request: GenerationRequest,
    items: Sequence[tuple[dict[str, Any], torch.Generator]],
    opts: PlanOptions,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Phase 2 for every (metadata, generator) item, CFG rows batched: the code strings."""
    lm = planner.lm
    head = lm.codes.head_rows() if lm.backend.capabilities.restricted_head else None
    columns = head_columns(head, lm.backend.vocab_size, lm.backend.device)
    valid = range(lm.codes.first_id, lm.codes.first_id + lm.codes.valid)
    rows, caps = [], []
    for metadata, gen in items:
        cond, uncond = _phase2_prompts(planner, request, format_cot(metadata), opts)
        target = code_target(request, metadata, opts)
        constraint = CodeConstraint(valid, lm.eos_id, target, columns=columns)
        rows.append(DecodeRow(cond, uncond, constraint, gen))
        caps.append(planner.code_token_cap(target, opts))
    results = decode(
        lm.backend, rows, sampling(opts, cfg=True), eos_id=lm.eos_id, pad_id=lm.pad_id,
        max_new_tokens=max(caps), head=head, progress=progress,
    )
    for r in results:
        if not r.eos:
            logger.warning("code phase stopped at the token cap after %d codes", len(r.tokens))
    return [codes_text(lm.codes, r.tokens) for r in results]

"""The planner inside `Pipeline.run`.

When it runs: a planner is loaded, the task has no source audio (the LM never plans cover,
repaint, add-layer, extract or complete: its codes would replace the source, pitfall 25), and
either `thinking` is on (the code phase; skipped when the request already carries codes) or
bpm / key / time signature / duration are missing (the CoT phase fills them).

How its output feeds the DiT: each take gets its own plan (seed N+i): the blank metas filled
from the CoT (the user's never replaced), the CoT caption, the CoT language when the request's
is `unknown` (a deliberate fix of upstream's key mismatch; `PlanOptions(propagate_language=
False)` reproduces upstream), and `audio_codes`, which turn text2music into the cover row with
a length of 5 latent frames per code. Takes are run one at a time (their codes differ) and
stacked; takes of different lengths are zero-padded at the end (each take's own length is in
`params["items"][i]["frames"]`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from songstep.pipeline.tiers import Tier
from songstep.planner import Plan, Planner, PlanOptions
from songstep.planner.phases import missing_fields
from songstep.request import GenerationRequest
from songstep.tasks import TaskSpec

# per-take params that differ between the takes of a planned batch
ITEM_KEYS = (
    "seed", "caption", "bpm", "keyscale", "timesignature", "duration", "language", "audio_codes",
    "task", "runs_as", "instruction", "frames", "seconds", "caption_prompt", "lyrics_prompt",
)


def plan_options(request: GenerationRequest) -> PlanOptions:
    """The planner's options from the request's `lm_*` fields (per call, never stored on the planner)."""
    return PlanOptions(
        temperature=request.lm_temperature, top_p=request.lm_top_p, top_k=request.lm_top_k,
        cfg_scale=request.lm_cfg_scale, use_cot_caption=request.use_cot_caption, max_new_tokens=request.max_new_tokens,
    )


def record(plan, prep, variant: str, source: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a take set, as sidecars and tags store them: the request's JSON form (what
    `songstep generate --from` replays), the flat effective values, where the weights came from,
    the task actually run, the sampler settings and which of them were defaults."""
    req = {**plan.request.to_json(), "seed": plan.seeds[0]}  # the seed actually used, also when random
    return {
        **plan.request.to_json(full=True),
        "request": req,
        "task": plan.request.task,
        "runs_as": prep.spec.name,
        "model": variant,
        "weights": dict(source),
        "instruction": prep.plan.instruction,
        "frames": prep.plan.frames,
        "seconds": prep.plan.seconds,
        "sampler": dataclasses.asdict(plan.sampler),
        "defaults": dict(plan.defaults),
        "warnings": list(plan.warnings),
        **prep.prompts,
    }


def planner_steps(request: GenerationRequest, spec: TaskSpec, thinking: bool) -> tuple[bool, bool]:
    """(whether the planner runs at all, whether it writes codes) for a validated request."""
    if spec.needs_source:
        return False, False
    codes = bool(thinking) and not request.audio_codes
    return codes or bool(missing_fields(request)), codes


def plan_takes(
    planner: Planner, request: GenerationRequest, seeds: Sequence[int], *, codes: bool,
    options: PlanOptions | None, tier: Tier, progress=None,
) -> list[Plan]:
    """One plan per take; the CoT's durations are limited to the tier's `max_duration_lm`.
    `progress(stage, done, total)` sees the LM's tokens (stages "lm" and "lm-codes")."""
    opts = options or PlanOptions()
    if opts.max_duration is None:
        opts = opts.replace(max_duration=tier.max_duration_lm)
    return planner.plan_batch(request, seeds=list(seeds), thinking=codes, options=opts, progress=progress)


def item_generators(generator, count: int) -> list[torch.Generator | None]:
    if generator is None:
        return [None] * count
    return [generator] if isinstance(generator, torch.Generator) else list(generator)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack [1, …, T_i] tensors along dim 0, zero-padding the last axis to the longest."""
    width = max(t.shape[-1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in tensors])


def combine(
    request: GenerationRequest, plans: Sequence[Plan], results: Sequence[Any], *, planner: Planner,
    options: PlanOptions | None, codes: bool, lm_seconds: float,
) -> dict[str, Any]:
    """Keyword arguments of the batch's `GenerationResult` from the per-take results."""
    audio = _stack([r.audio for r in results])
    lengths = {r.latents.shape[1] for r in results if r.latents is not None}
    latents = torch.cat([r.latents for r in results]) if len(lengths) == 1 and all(
        r.latents is not None for r in results) else None
    timings: dict[str, float] = {"lm": lm_seconds}
    for r in results:
        for key, value in r.timings.items():
            timings[key] = timings.get(key, 0.0) + value
    timings["total"] += lm_seconds
    params = {k: v for k, v in results[0].params.items()}
    params.update(batch=len(results), seed=request.seed, request={**request.to_json(), "seed": plans[0].seed})
    params["items"] = [{k: r.params.get(k) for k in ITEM_KEYS} for r in results]
    params["planner"] = {
        "lm": planner.name,
        "thinking": codes,
        "options": dataclasses.asdict(options or PlanOptions()),
        "items": [{"metadata": p.metadata, "lm_metadata": p.lm_metadata, "code_count": p.code_count} for p in plans],
    }
    return dict(
        audio=audio, sample_rate=results[0].sample_rate, seeds=[p.seed for p in plans], params=params,
        timings=timings, latents=latents,
    )

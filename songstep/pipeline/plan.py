"""Resolve once: a validated request + the loaded checkpoint → the execution plan.

`resolve` is the one function that reads a `GenerationRequest`'s sampler, text and level fields and
the checkpoint family's defaults (`songstep.config.FAMILY_DEFAULTS`); everything after it (source
and text preparation, the samplers, the decoder, post-processing) reads only the `ExecutionPlan`.
It also makes the checks that need the checkpoint (a task that needs a base model, the family's step
limit) and collects warnings for values the model ignores — all before any audio is read or any
model runs. The plan records which values came from defaults, so a sidecar tells them apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from songstep.conditioning import RepaintSettings, TaskInputs, repaint_settings
from songstep.config import DiTConfig, family, variant_defaults
from songstep.errors import InvalidRequest
from songstep.postprocess import Level
from songstep.request import GenerationRequest, take_seeds
from songstep.sampling.dcw import DCWOptions
from songstep.sampling.flow import SamplerOptions
from songstep.tasks import TaskSpec, get_task, with_codes

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TextInputs:
    """What the caption and lyric prompts are built from."""

    caption: str
    lyrics: str  # '[Instrumental]' when the request is instrumental without lyrics
    language: str
    bpm: int | None
    keyscale: str | None
    timesignature: str | None
    duration: float | None
    non_cover: bool  # also encode the plain text2music caption (cover strength < 1)


@dataclass(frozen=True)
class ExecutionPlan:
    """Everything one run of the DiT and VAE needs, resolved from one request."""

    request: GenerationRequest  # kept for the record (sidecars, tags); never re-read to run
    spec: TaskSpec
    task: TaskInputs
    seeds: list[int]
    sampler: SamplerOptions
    texts: TextInputs
    source_audio: Any
    reference_audio: Any
    audio_codes: str | None
    retake_seeds: list[int] | None
    retake_variance: float
    wave_crossfade: float
    level: Level
    defaults: dict[str, Any] = field(default_factory=dict)  # field → the default value used
    warnings: tuple[str, ...] = ()

    @property
    def batch(self) -> int:
        return len(self.seeds)


def _sampler(request: GenerationRequest, config: DiTConfig, variant: str | None,
             settings: RepaintSettings) -> tuple[SamplerOptions, dict]:
    d = variant_defaults(config, variant)
    defaults: dict[str, Any] = {}
    unset = request.defaulted()

    def pick(name: str, value: Any, default: Any) -> Any:
        if value is None or name in unset:
            defaults[name] = default
            return default
        return value

    steps = pick("steps", request.steps, d.steps)
    shift = pick("shift", request.shift, d.shift)
    guidance = d.guidance if config.is_turbo else pick("guidance", request.guidance, d.guidance)
    if config.is_turbo:
        defaults["guidance"] = d.guidance
    dcw = pick("dcw", request.dcw, d.dcw)
    solver = pick("solver", request.solver, d.solver)
    options = SamplerOptions(
        steps=int(steps), shift=float(shift), timesteps=request.timesteps, solver=solver,
        guidance_scale=float(guidance), guidance=request.guidance_method, cfg_interval=tuple(request.cfg_interval),
        cover_strength=request.strength, cover_noise_strength=request.cover_noise_strength,
        repaint_injection_ratio=settings.injection_ratio, repaint_crossfade_frames=settings.crossfade_frames,
        dcw=DCWOptions(enabled=bool(dcw)),
    )
    return options, defaults


def _checks(request: GenerationRequest, spec: TaskSpec, config: DiTConfig) -> list[str]:
    """Errors that need the checkpoint; returns warnings for values it ignores."""
    fam, limits = family(config), variant_defaults(config)
    problems = []
    if spec.needs_turbo_off and config.is_turbo:
        problems.append(f"task {spec.name!r} needs a base or sft model (the loaded model is turbo); load e.g. --variant base")
    if request.steps is not None and request.steps > limits.max_steps:
        problems.append(f"steps {request.steps} is above the {fam} limit of {limits.max_steps}")
    if problems:
        raise InvalidRequest("\n".join(problems))
    warnings = []
    if config.is_turbo and request.guidance is not None and "guidance" not in request.defaulted():
        warnings.append(f"guidance {request.guidance:g} is ignored: turbo models run without CFG")
    if request.instrumental and request.lyrics.strip() and request.lyrics.strip() != "[Instrumental]":
        warnings.append("lyrics are ignored with instrumental=True")
    return warnings


def resolve(request: GenerationRequest, config: DiTConfig, variant: str | None = None,
            seeds: list[int] | None = None) -> ExecutionPlan:
    """The execution plan of a validated request on the loaded checkpoint. `seeds` (one per take)
    come from the caller's generators; otherwise from the request's seed policy."""
    spec = get_task(request.task)
    warnings = _checks(request, spec, config)
    for w in warnings:
        log.warning(w)
    if request.audio_codes:
        spec = with_codes(spec)
    seeds = list(seeds) if seeds is not None else take_seeds(request.seed, request.batch)
    if len(seeds) != request.batch:
        raise InvalidRequest(f"{len(seeds)} generators for a batch of {request.batch}")
    settings = repaint_settings(request.repaint_strength)
    options, defaults = _sampler(request, config, variant, settings)
    lyrics = "[Instrumental]" if request.instrumental else request.lyrics
    texts = TextInputs(request.caption, lyrics, request.language, request.bpm, request.keyscale,
                       request.timesignature, request.duration, request.strength < 1.0)
    task = TaskInputs(spec, request.tracks, request.duration, request.repaint_start, request.repaint_end,
                      bool(request.audio_codes))
    retake = take_seeds(request.retake_seed, len(seeds)) if request.retake_variance > 0 else None
    level = Level(request.normalize, request.loudness, keep=spec.keeps_level)
    return ExecutionPlan(
        request=request, spec=spec, task=task, seeds=seeds, sampler=options, texts=texts,
        source_audio=request.source_audio, reference_audio=request.reference_audio, audio_codes=request.audio_codes,
        retake_seeds=retake, retake_variance=request.retake_variance,
        wave_crossfade=settings.wave_crossfade_seconds, level=level,
        defaults={**defaults, "family": family(config), **({"variant": variant} if variant else {})},
        warnings=tuple(warnings),
    )

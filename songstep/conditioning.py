"""A request plus its TaskSpec → what the DiT is conditioned on (pure functions).

Validation happens here, once, at the boundary (`validate_request`, `validate_source`): every bad
input raises `InvalidRequest` with a message a user can act on. `plan_task` turns a valid request
into frame-level facts (length, repaint window, source-extension padding, instruction, cover flag);
`source_latents`, `chunk_mask` and `window_mask` build the tensors. Nothing here branches on a
task's name: behaviour comes from the TaskSpec row's fields (spec pipeline.md §3.3, §4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from songstep.config import DiTConfig, GenerationRequest, variant_defaults
from songstep.constants import (
    HOP_LENGTH,
    KEYSCALES,
    LANGUAGES,
    MAX_BATCH,
    MAX_BPM,
    MAX_DURATION,
    MIN_BPM,
    MIN_DURATION,
    MIN_LATENT_FRAMES,
    SAMPLE_RATE,
    TIME_SIGNATURES,
)
from songstep.errors import InvalidRequest
from songstep.tasks import TaskSpec, get_task

SOLVERS = ("euler", "heun")
METHODS = ("ode", "sde")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidRequest(message)


def _in_unit(name: str, value: float) -> None:
    _check(0.0 <= float(value) <= 1.0, f"{name} must be between 0 and 1, got {value}")


def validate_sampler(request: GenerationRequest, config: DiTConfig) -> None:
    limits = variant_defaults(config)
    family = "turbo" if config.is_turbo else "base/sft"
    if request.steps is not None:
        _check(int(request.steps) >= 1, f"steps must be at least 1, got {request.steps}")
        _check(
            int(request.steps) <= limits.max_steps,
            f"steps {request.steps} is above the {family} limit of {limits.max_steps}",
        )
    if request.guidance is not None:
        _check(float(request.guidance) >= 0, f"guidance must be ≥ 0, got {request.guidance}")
    if request.shift is not None:
        _check(float(request.shift) > 0, f"shift must be > 0, got {request.shift}")
    _check(request.solver in SOLVERS, f"unknown solver {request.solver!r}; choose from {', '.join(SOLVERS)}")
    _check(request.method in METHODS, f"unknown method {request.method!r}; choose from {', '.join(METHODS)}")
    lo, hi = request.cfg_interval
    _check(0.0 <= lo <= hi <= 1.0, f"cfg interval must satisfy 0 ≤ start ≤ end ≤ 1, got {request.cfg_interval}")
    _in_unit("retake variance", request.retake_variance)


def validate_metadata(request: GenerationRequest) -> None:
    if request.duration is not None:
        _check(
            MIN_DURATION <= float(request.duration) <= MAX_DURATION,
            f"duration must be between {MIN_DURATION:g} and {MAX_DURATION:g} seconds, got {request.duration:g}",
        )
    if request.bpm is not None:
        _check(MIN_BPM <= int(request.bpm) <= MAX_BPM, f"bpm must be between {MIN_BPM} and {MAX_BPM}, got {request.bpm}")
    if request.keyscale:
        _check(request.keyscale in KEYSCALES, f"unknown key {request.keyscale!r}; write it like 'C major' or 'F# minor'")
    if request.timesignature:
        _check(
            normalize_timesignature(request.timesignature) in TIME_SIGNATURES,
            f"time signature must be one of {', '.join(TIME_SIGNATURES)} (or N/4), got {request.timesignature!r}",
        )
    _check(request.language in LANGUAGES, f"unknown language {request.language!r}; use a code such as 'en' or 'unknown'")


def normalize_timesignature(value: str | int) -> str:
    text = str(value).strip()
    return text[:-2] if text.endswith("/4") else text


def validate_request(request: GenerationRequest, config: DiTConfig) -> TaskSpec:
    """Static checks (no audio read yet). Returns the request's TaskSpec."""
    spec = get_task(request.task)
    variant = "turbo" if config.is_turbo else "base/sft"
    _check(
        not (spec.needs_turbo_off and config.is_turbo),
        f"task {spec.name!r} needs a base or sft model (the loaded variant is {variant}); "
        "load e.g. --variant base",
    )
    _check(
        not spec.needs_source or request.source_audio is not None,
        f"task {spec.name!r} needs source audio (pass a file as source)",
    )
    spec.instruction(request.tracks)  # validates track names
    _check(1 <= int(request.batch) <= MAX_BATCH, f"batch must be between 1 and {MAX_BATCH}, got {request.batch}")
    _in_unit("strength", request.strength)
    _in_unit("cover noise strength", request.cover_noise_strength)
    _in_unit("repaint strength", request.repaint_strength)
    validate_sampler(request, config)
    validate_metadata(request)
    if spec.window and request.repaint_end is not None:
        _check(
            request.repaint_start < request.repaint_end,
            f"empty repaint window: start {request.repaint_start:g} s is not before end {request.repaint_end:g} s",
        )
    return spec


# -- planning -------------------------------------------------------------------------------------
def duration_samples(seconds: float) -> int:
    """Samples for a requested duration: int(round(d, 1)·48000), at least 0.1 s (spec §3.3)."""
    return int(max(round(float(seconds), 1), 0.1) * SAMPLE_RATE)


@dataclass(frozen=True)
class TaskPlan:
    spec: TaskSpec
    instruction: str
    frames: int  # real latent frames of the result
    dit_frames: int  # frames the DiT runs on (≥ 128, upstream's batch floor)
    pad_left: int  # samples of silence added before the source (repaint extension)
    pad_right: int
    window: tuple[int, int] | None  # [start, end) in result frames

    @property
    def seconds(self) -> float:
        return self.frames * HOP_LENGTH / SAMPLE_RATE

    @property
    def is_cover(self) -> bool:
        return self.spec.is_cover


def _window(spec: TaskSpec, request: GenerationRequest, pad_left: int, frames: int, src_seconds: float):
    if not spec.window:
        return None
    end = src_seconds if request.repaint_end is None or request.repaint_end < 0 else request.repaint_end
    start_s = request.repaint_start + pad_left / SAMPLE_RATE
    end_s = end + pad_left / SAMPLE_RATE
    start_f = min(max(int(start_s * SAMPLE_RATE // HOP_LENGTH), 0), frames - 1)
    end_f = min(max(int(end_s * SAMPLE_RATE // HOP_LENGTH), start_f + 1), frames)
    return start_f, end_f


def validate_source(request: GenerationRequest, spec: TaskSpec, source_samples: int) -> None:
    """Checks that need the source's length: the window and the result's length."""
    src_seconds = source_samples / SAMPLE_RATE
    if not spec.window:
        _check(src_seconds <= MAX_DURATION, f"source is {src_seconds:.1f} s; the limit is {MAX_DURATION:g} s")
        return
    end = src_seconds if request.repaint_end is None or request.repaint_end < 0 else request.repaint_end
    _check(
        request.repaint_start < end,
        f"empty repaint window: start {request.repaint_start:g} s is not before end {end:g} s",
    )
    _check(
        request.repaint_start <= src_seconds,
        f"repaint window starts at {request.repaint_start:g} s, after the source's end ({src_seconds:.2f} s): "
        f"the gap would stay silent; start at or before {src_seconds:.2f} s",
    )
    total = max(end, src_seconds) - min(request.repaint_start, 0.0)
    _check(total <= MAX_DURATION, f"the result would be {total:.1f} s long; the limit is {MAX_DURATION:g} s")


def plan_task(request: GenerationRequest, spec: TaskSpec, source_samples: int | None) -> TaskPlan:
    """Frame-level facts of a validated request. `source_samples` is the source length at 48 kHz
    (None for text2music). Repaint with a negative start or an end past the source extends the
    result on that side by silence that the window then regenerates (upstream's outpainting)."""
    instruction = spec.instruction(request.tracks)
    pad_left = pad_right = 0
    if source_samples is not None and spec.needs_source:
        validate_source(request, spec, source_samples)
        if spec.window:
            src_seconds = source_samples / SAMPLE_RATE
            end = src_seconds if request.repaint_end is None or request.repaint_end < 0 else request.repaint_end
            pad_left = int(round(max(0.0, -request.repaint_start) * SAMPLE_RATE))
            pad_right = int(round(max(0.0, end - src_seconds) * SAMPLE_RATE))
        samples = source_samples + pad_left + pad_right
    elif request.audio_codes:
        samples = 0  # the caller sets the length from the code count
    else:
        if request.duration is None:
            raise InvalidRequest("duration is required for a new song (10–600 seconds)")
        samples = duration_samples(request.duration)
    frames = samples // HOP_LENGTH
    window = _window(spec, request, pad_left, max(frames, 1), (source_samples or 0) / SAMPLE_RATE)
    return TaskPlan(spec, instruction, frames, max(frames, MIN_LATENT_FRAMES), pad_left, pad_right, window)


def with_frames(plan: TaskPlan, frames: int) -> TaskPlan:
    """The plan for a result of `frames` frames (LM codes fix the length: 5 frames per code)."""
    return TaskPlan(plan.spec, plan.instruction, frames, max(frames, MIN_LATENT_FRAMES), 0, 0, plan.window)


def source_latents(plan: TaskPlan, source: torch.Tensor | None, silence: torch.Tensor) -> torch.Tensor:
    """src_latents [T, C] for the DiT: silence (new song), the source, or the source with the
    repaint window replaced by silence; right-padded with silence to the DiT length."""
    t = plan.dit_frames
    fill = silence[:t].to(silence.dtype)
    if plan.spec.source == "silence" or source is None:
        return fill.clone()
    src = fill.clone()
    n = min(source.shape[0], t)
    src[:n] = source[:n].to(src.dtype)
    if plan.spec.source == "audio_window_silenced" and plan.window is not None:
        a, b = plan.window
        src[a:b] = fill[a:b]
    return src


def window_mask(plan: TaskPlan) -> torch.Tensor:
    """[T] bool: True where the result is generated (the window, or everything)."""
    mask = torch.zeros(plan.dit_frames, dtype=torch.bool)
    if plan.window is None:
        mask[:] = True
    else:
        mask[plan.window[0] : plan.window[1]] = True
    return mask


def chunk_mask(plan: TaskPlan, channels: int = 64) -> torch.Tensor:
    """[T, C] 0/1: 1 = generate, 0 = keep (broadcast over the latent channels)."""
    return window_mask(plan)[:, None].expand(-1, channels).clone()


@dataclass(frozen=True)
class RepaintSettings:
    injection_ratio: float
    crossfade_frames: int
    wave_crossfade_seconds: float


def repaint_settings(strength: float) -> RepaintSettings:
    """repaint_strength 0 = conservative (keep the source outside the window: injection 1.0,
    25 crossfade frames, 50 ms waveform crossfade) … 1 = aggressive (none of it)."""
    keep = 1.0 - float(strength)
    return RepaintSettings(keep, int(round(25 * keep)), 0.05 * keep)


def metas_duration(plan: TaskPlan, request: GenerationRequest) -> float | None:
    """The duration the metas block states: the source's length for source tasks, else the
    request's (None → the prompt builder's '30 seconds')."""
    if plan.spec.length_from_source or plan.spec.window:
        return plan.seconds
    return request.duration if request.duration is not None else (plan.seconds if plan.frames else None)


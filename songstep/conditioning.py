"""A resolved task plus the source's length → what the DiT is conditioned on (pure functions).

The request was validated when it was built (`songstep.request`) and resolved into an execution
plan (`songstep.pipeline.plan`); this module reads only the plan's values. `validate_source` checks
what needs the source's length; `plan_task` turns the values into frame-level facts (length,
repaint window, source-extension padding, instruction, cover flag); `source_latents`, `chunk_mask`
and `window_mask` build the tensors. Nothing here branches on a task's name: behaviour comes from
the TaskSpec row's fields.

Lengths: a requested duration d gives int(round(d, 1)·48000) samples (at least 0.1 s) and that
// 1920 latent frames at 25 Hz; the DiT always runs at least 128 frames (5.12 s), upstream's batch
floor, padded with the silence latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from songstep.constants import HOP_LENGTH, MAX_DURATION, MIN_LATENT_FRAMES, SAMPLE_RATE
from songstep.errors import InvalidRequest
from songstep.tasks import TaskSpec


# -- planning -------------------------------------------------------------------------------------
def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidRequest(message)


def duration_samples(seconds: float) -> int:
    """Samples for a requested duration: int(round(d, 1)·48000), at least 0.1 s."""
    return int(max(round(float(seconds), 1), 0.1) * SAMPLE_RATE)


@dataclass(frozen=True)
class TaskInputs:
    """The values of a resolved request that decide lengths and windows."""

    spec: TaskSpec
    tracks: tuple[str, ...] = ()
    duration: float | None = None
    repaint_start: float = 0.0
    repaint_end: float | None = None
    has_codes: bool = False

    def window_end(self, src_seconds: float) -> float:
        """The window's end in source seconds (None or negative = the source's end)."""
        return src_seconds if self.repaint_end is None or self.repaint_end < 0 else self.repaint_end


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


def _window(task: TaskInputs, pad_left: int, frames: int, src_seconds: float):
    if not task.spec.window:
        return None
    start_s = task.repaint_start + pad_left / SAMPLE_RATE
    end_s = task.window_end(src_seconds) + pad_left / SAMPLE_RATE
    start_f = min(max(int(start_s * SAMPLE_RATE // HOP_LENGTH), 0), frames - 1)
    end_f = min(max(int(end_s * SAMPLE_RATE // HOP_LENGTH), start_f + 1), frames)
    return start_f, end_f


def validate_source(task: TaskInputs, source_samples: int) -> None:
    """Checks that need the source's length: the window and the result's length. A window that
    starts after the source's end would leave a hole of silence, so it is refused."""
    src_seconds = source_samples / SAMPLE_RATE
    if not task.spec.window:
        _check(src_seconds <= MAX_DURATION, f"source is {src_seconds:.1f} s; the limit is {MAX_DURATION:g} s")
        return
    end = task.window_end(src_seconds)
    _check(task.repaint_start < end, f"empty repaint window: start {task.repaint_start:g} s is not before end {end:g} s")
    _check(
        task.repaint_start <= src_seconds,
        f"the window starts at {task.repaint_start:g} s, after the source's end ({src_seconds:.2f} s): "
        "it would leave a gap of silence; start it at or before the end",
    )
    total = max(end, src_seconds) - min(task.repaint_start, 0.0)
    _check(total <= MAX_DURATION, f"the result would be {total:.1f} s long; the limit is {MAX_DURATION:g} s")


def plan_task(task: TaskInputs, source_samples: int | None) -> TaskPlan:
    """Frame-level facts of a resolved task. `source_samples` is the source length at 48 kHz
    (None for text2music). Repaint with a negative start or an end past the source extends the
    result on that side by silence that the window then regenerates (upstream's outpainting)."""
    spec = task.spec
    instruction = spec.instruction(task.tracks)
    pad_left = pad_right = 0
    if source_samples is not None and spec.needs_source:
        validate_source(task, source_samples)
        if spec.window:
            src_seconds = source_samples / SAMPLE_RATE
            pad_left = int(round(max(0.0, -task.repaint_start) * SAMPLE_RATE))
            pad_right = int(round(max(0.0, task.window_end(src_seconds) - src_seconds) * SAMPLE_RATE))
        samples = source_samples + pad_left + pad_right
    elif task.has_codes:
        samples = 0  # the caller sets the length from the code count
    else:
        if task.duration is None:
            raise InvalidRequest("duration is required for a new song (10–600 seconds)")
        samples = duration_samples(task.duration)
    frames = samples // HOP_LENGTH
    window = _window(task, pad_left, max(frames, 1), (source_samples or 0) / SAMPLE_RATE)
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


def metas_duration(plan: TaskPlan, duration: float | None) -> float | None:
    """The duration the metas block states: the source's length for source tasks, else the
    requested one (None → the prompt builder's '30 seconds')."""
    if plan.spec.length_from_source or plan.spec.window:
        return plan.seconds
    return duration if duration is not None else (plan.seconds if plan.frames else None)


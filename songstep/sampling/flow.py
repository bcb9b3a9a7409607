"""The flow-matching sampling loops, written over a velocity callable.

`velocity(x, t, branch, corrector) -> (v_cond, v_uncond | None)` evaluates the network at time t
(a float already rounded to the model dtype) on condition `branch` (0: the task's condition; 1: the
non-cover condition used after an `audio_cover_strength` switch). It returns the unconditional half
too when classifier-free guidance is on. Everything else — schedules, guidance, Euler/SDE/Heun
steps, DCW, cover start and condition switch, repaint injection and crossfade, velocity clamp/EMA,
flow-edit — lives here as plain functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from songstep.sampling.dcw import DCWOptions, apply_dcw
from songstep.sampling.guidance import get_guidance
from songstep.sampling.schedules import Schedule, round_scalar
from songstep.sampling.solvers import Step, get_solver, x0_jump

VelocityFn = Callable[[torch.Tensor, float, int, bool], tuple[torch.Tensor, torch.Tensor | None]]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SamplerOptions:
    """Every sampler knob, with the newest upstream defaults."""

    steps: int | None = 8
    shift: float = 3.0
    timesteps: tuple[float, ...] | None = None
    method: str = "ode"  # "ode" | "sde" (kept for upstream's infer_method: "sde" selects the sde solver)
    solver: str = "euler"  # a name in songstep.sampling.solvers.SOLVERS
    guidance_scale: float = 1.0
    guidance: str = "apg"
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    cover_strength: float = 1.0
    cover_noise_strength: float = 0.0
    repaint_injection_ratio: float = 0.5
    repaint_crossfade_frames: int = 10
    velocity_norm_threshold: float = 0.0
    velocity_ema_factor: float = 0.0
    dcw: DCWOptions = field(default_factory=DCWOptions)

    def __post_init__(self) -> None:
        if self.method not in ("ode", "sde"):
            raise ValueError(f"unknown method {self.method!r}; use 'ode' or 'sde'")
        get_solver(self.solver)
        get_guidance(self.guidance)


@dataclass(frozen=True)
class Repaint:
    mask: torch.Tensor  # [B, T] bool, True = regenerate
    clean: torch.Tensor  # [B, T, C] source latents


def inject_source(x: torch.Tensor, repaint: Repaint, t_after: float, noise: torch.Tensor) -> torch.Tensor:
    """Outside the window, replace x by the source noised to the step's target time."""
    noised = t_after * noise + (1 - t_after) * repaint.clean
    return torch.where(repaint.mask[..., None], x, noised)


def crossfade_mask(mask: torch.Tensor, frames: int) -> torch.Tensor:
    """fp32 soft mask: the hard mask plus linear ramps over up to `frames` frames outside each end
    of a row's window (rows without a window stay 0)."""
    soft = mask.to(torch.float32).clone()
    length = soft.shape[1]
    for row, hard in zip(soft, mask):
        ids = torch.nonzero(hard).flatten()
        if ids.numel() == 0:
            continue
        left, right = int(ids[0]), int(ids[-1]) + 1
        start, end = max(0, left - frames), min(length, right + frames)
        if left > start:
            row[start:left] = torch.linspace(0, 1, left - start + 2)[1:-1]
        if end > right:
            row[right:end] = torch.linspace(1, 0, end - right + 2)[1:-1]
    return soft


def blend_boundaries(x: torch.Tensor, repaint: Repaint, frames: int) -> torch.Tensor:
    """Final latent crossfade between generated and source frames; the result is fp32 as upstream."""
    m = crossfade_mask(repaint.mask.cpu(), frames).to(x.device)[..., None]
    return m * x + (1 - m) * repaint.clean


def _interval_ends(interval: tuple[float, float], dtype: torch.dtype) -> tuple[float, float]:
    lo, hi = (torch.tensor(v, dtype=dtype).item() for v in interval)
    return lo, hi


def _in_interval(t: float, interval: tuple[float, float], dtype: torch.dtype) -> bool:
    lo, hi = _interval_ends(interval, dtype)
    return lo <= t <= hi


@dataclass
class _State:
    options: SamplerOptions
    dtype: torch.dtype
    guidance_state: dict = field(default_factory=dict)
    prev_v: torch.Tensor | None = None
    interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        # the CFG interval's ends rounded to the model dtype once, before the loop (the loop
        # itself then holds no tensor-to-Python conversion)
        self.interval = _interval_ends(self.options.cfg_interval, self.dtype)

    def guided(self, velocity: VelocityFn, x, t: float, branch: int, corrector: bool = False):
        cond, uncond = velocity(x, t, branch, corrector)
        o = self.options
        if uncond is None or not self.interval[0] <= t <= self.interval[1]:
            return cond
        fn = get_guidance(o.guidance)
        return fn(cond, uncond, o.guidance_scale, self.guidance_state, latents=x, sigma=t, corrector=corrector)

    def clamp(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tau = self.options.velocity_norm_threshold
        if tau <= 0:
            return v
        v_norm = torch.norm(v, dim=(1, 2), keepdim=True)
        x_norm = torch.norm(x, dim=(1, 2), keepdim=True) + 1e-10
        return v * torch.clamp(tau * x_norm / (v_norm + 1e-10), max=1.0)

    def ema(self, v: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        f = self.options.velocity_ema_factor
        if f <= 0 or prev is None:
            return v
        return (1.0 - f) * v + f * prev


def _start(noise, schedule: Schedule, options: SamplerOptions, source):
    """Cover-noise start: begin from the source noised to the schedule time nearest 1 − strength."""
    if options.cover_noise_strength <= 0.0:
        return noise, schedule
    if source is None:
        raise ValueError("cover_noise_strength > 0 needs the source latents")
    idx = schedule.nearest_start(1.0 - options.cover_noise_strength)
    t_star = schedule.start_value(idx)
    return t_star * noise + (1 - t_star) * source, schedule.truncate(idx)


def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    schedule: Schedule,
    options: SamplerOptions,
    *,
    source: torch.Tensor | None = None,
    repaint: Repaint | None = None,
    sde_noise: NoiseFn | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Integrate from `noise` (the initial noise tensor; it is also what repaint injection uses) to
    clean latents. Turbo schedules end with an x0 jump; CFG schedules step to their final time."""
    state = _State(options, noise.dtype)
    x, schedule = _start(noise, schedule, options, source)
    n, times = schedule.num_steps, schedule.times
    cover_steps = int(schedule.cover_basis * options.cover_strength)
    cutoff = round(options.repaint_injection_ratio * n)
    solver = get_solver("sde" if options.method == "sde" else options.solver)
    draw = sde_noise or torch.randn_like
    dts = [round_scalar(times[i] - times[i + 1], noise.dtype) for i in range(n)]  # host-side, before the loop
    for i in range(n):
        t, t_next, last = times[i], times[i + 1], i == n - 1
        branch = 0 if i < cover_steps else 1
        v = state.ema(state.clamp(state.guided(velocity, x, t, branch), x), state.prev_v)
        x_before, v_pre = x, v
        step = solver if not (schedule.turbo and last) else x0_jump
        x, v, t_after = step(Step(state, velocity, x, v, t, t_next, dts[i], i, n, schedule.turbo, branch, draw))
        x = apply_dcw(x, x_before - v_pre * t, t, options.dcw)
        state.prev_v = v
        if repaint is not None and t_after is not None and i < cutoff:
            x = inject_source(x, repaint, t_after, noise)
        if progress is not None:
            progress(i + 1, n)
    if repaint is not None and options.repaint_crossfade_frames > 0:
        x = blend_boundaries(x, repaint, options.repaint_crossfade_frames)
    return x

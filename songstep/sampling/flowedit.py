"""Flow-edit: move a source clip toward a target caption/lyrics.

With n steps, n_min = int(n·edit_n_min), n_max = int(n·edit_n_max): steps before n_min are skipped;
inside the window each of `n_avg` forward-noise draws gives z_src = (1−t)·x_src + t·ε and
z_tar = z_edit + z_src − x_src, the source and target velocities are averaged, and
z_edit += (t_next − t)·(V_tar − V_src). After the window a target-only trajectory starts from
z_edit + x_src,t − x_src and is Euler-stepped to the end. Guidance is APG or CFG with separate
state per branch (APG momentum restored before each draw and advanced once per step with the
averaged difference); DCW, Heun and ADG are off.
"""

from __future__ import annotations

import torch

from songstep.sampling.flow import NoiseFn, ProgressFn, SamplerOptions, VelocityFn, _in_interval, _State
from songstep.sampling.guidance import APG_MOMENTUM
from songstep.sampling.schedules import Schedule


class _Branch:
    """One trajectory's guidance state (momentum, previous velocity)."""

    def __init__(self, options: SamplerOptions, dtype: torch.dtype) -> None:
        self.state = _State(options, dtype)
        self.diff_sum: torch.Tensor | None = None

    def velocity(self, velocity: VelocityFn, x, t: float, branch: int, guide: bool) -> torch.Tensor:
        cond, uncond = velocity(x, t, branch, False)
        if uncond is None or not guide:
            return cond
        self.diff_sum = (cond - uncond) if self.diff_sum is None else self.diff_sum + (cond - uncond)
        o = self.state.options
        from songstep.sampling.guidance import get_guidance

        return get_guidance(o.guidance)(cond, uncond, o.guidance_scale, self.state.guidance_state, latents=x, sigma=t)

    def snapshot(self):
        self.diff_sum = None
        return self.state.guidance_state.get("momentum", 0)

    def advance(self, pre, n_avg: int) -> None:
        if self.diff_sum is None:
            self.state.guidance_state["momentum"] = pre
        else:
            self.state.guidance_state["momentum"] = self.diff_sum / n_avg + APG_MOMENTUM * pre


def flow_edit(
    velocity: VelocityFn,
    source: torch.Tensor,
    schedule: Schedule,
    options: SamplerOptions,
    *,
    n_min: float,
    n_max: float,
    n_avg: int,
    forward_noise: NoiseFn,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """`velocity(..., branch=0)` is the source condition, `branch=1` the target condition."""
    if n_avg < 1:
        raise ValueError(f"edit_n_avg must be ≥ 1, got {n_avg}")
    if not 0.0 <= n_min <= n_max <= 1.0:
        raise ValueError(f"need 0 ≤ edit_n_min ≤ edit_n_max ≤ 1, got {n_min}, {n_max}")
    if options.guidance not in ("apg", "apg_classic", "cfg"):
        options = SamplerOptions(**{**options.__dict__, "guidance": "apg"})
    dtype, n = source.dtype, schedule.num_steps
    lo, hi = int(n * n_min), int(n * n_max)
    src, tar = _Branch(options, dtype), _Branch(options, dtype)
    z_edit, x_tar = source.clone(), None
    for i in range(lo, n):
        t, t_next = schedule.times[i], schedule.times[i + 1]
        guide = _in_interval(t, options.cfg_interval, dtype)
        dt = torch.tensor(t_next, dtype=dtype) - torch.tensor(t, dtype=dtype)
        if i < hi:
            pre = (src.snapshot(), tar.snapshot())
            v_src_sum = v_tar_sum = 0
            for _ in range(n_avg):
                src.state.guidance_state["momentum"], tar.state.guidance_state["momentum"] = pre
                z_src = (1.0 - t) * source + t * forward_noise(source)
                z_tar = z_edit + z_src - source
                v_src = src.velocity(velocity, z_src, t, 0, guide)
                v_tar = tar.velocity(velocity, z_tar, t, 1, guide)
                v_src_sum = v_src_sum + src.state.clamp(v_src, z_src)
                v_tar_sum = v_tar_sum + tar.state.clamp(v_tar, z_tar)
            src.advance(pre[0], n_avg)
            tar.advance(pre[1], n_avg)
            v_src_avg = src.state.ema(v_src_sum / n_avg, src.state.prev_v)
            v_tar_avg = tar.state.ema(v_tar_sum / n_avg, tar.state.prev_v)
            src.state.prev_v, tar.state.prev_v = v_src_avg, v_tar_avg
            z_edit = z_edit + dt * (v_tar_avg - v_src_avg)
        else:
            if x_tar is None:
                x_src_t = (1.0 - t) * source + t * forward_noise(source)
                x_tar = z_edit + x_src_t - source
            tar.diff_sum = None
            v_tar = tar.state.clamp(tar.velocity(velocity, x_tar, t, 1, guide), x_tar)
            v_tar = tar.state.ema(v_tar, tar.state.prev_v)
            tar.state.prev_v = v_tar
            x_tar = x_tar + dt * v_tar
        if progress is not None:
            progress(i + 1 - lo, n - lo)
    return z_edit if x_tar is None else x_tar

"""The solver registry: one table of step functions that validation, the CLI's choices and the
docs read (`SOLVERS`).

A step moves the latents from time t to t_next given the guided velocity v at (x, t). Flow
convention: x_t = t·noise + (1−t)·x0, so x0 = x − v·t.
- euler: x ← x − v·Δt (Δt rounded to the model dtype, as upstream);
- heun: Euler predictor, velocity at the predicted point, then the average of both velocities
  (one extra network evaluation per step; a deterministic ODE solver);
- sde: predict x0 = x − v·t and re-noise it to the next time with fresh noise
  (t_next on turbo tables; 1 − (i+1)/n on base/sft).
The last step of a turbo schedule always jumps to x0 = x − v·t, whatever the solver.
Each step returns (x, v, t_after): the new latents, the velocity to remember for the EMA, and the
time the latents are now at (for repaint injection; None after the x0 jump).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Step:
    state: Any  # the sampling loop's state (guidance, clamp and EMA)
    velocity: Callable
    x: torch.Tensor
    v: torch.Tensor
    t: float
    t_next: float
    dt: float  # t − t_next rounded to the model dtype (computed before the loop: no host sync per step)
    index: int
    num_steps: int
    turbo: bool
    branch: int
    draw: Callable[[torch.Tensor], torch.Tensor]


def _after(s: Step):
    # upstream's CFG loop injects with the 0-d model-dtype tensor t_next (so 1 − t rounds in that
    # dtype); turbo uses the Python float. torch.full fills it on the device (torch.tensor would
    # copy it from the host: a stream sync every step)
    return s.t_next if s.turbo else torch.full((), s.t_next, dtype=s.x.dtype, device=s.x.device)


def euler(s: Step):
    return s.x - s.v * s.dt, s.v, _after(s)


def heun(s: Step):
    dt = s.dt
    x_pred = s.x - s.v * dt
    v2 = s.state.clamp(s.state.guided(s.velocity, x_pred, s.t_next, s.branch, corrector=True), x_pred)
    v2 = s.state.ema(v2, s.v)
    v_avg = 0.5 * (s.v + v2)
    return s.x - v_avg * dt, v_avg, _after(s)


def sde(s: Step):
    t_after = s.t_next if s.turbo else 1.0 - (s.index + 1) / s.num_steps
    x0 = s.x - s.v * s.t
    return t_after * s.draw(x0) + (1 - t_after) * x0, s.v, t_after


def x0_jump(s: Step):
    """The final step of a turbo table."""
    return s.x - s.v * s.t, s.v, None


SOLVERS: dict[str, Callable[[Step], tuple]] = {"euler": euler, "heun": heun, "sde": sde}


def get_solver(name: str) -> Callable[[Step], tuple]:
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose from: {', '.join(SOLVERS)}") from None

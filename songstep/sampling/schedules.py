"""Timestep schedules.

Flow convention: x_t = t·noise + (1 − t)·x0; t = 1 is pure noise. A schedule holds the times the
DiT is called at, already rounded to the model dtype (upstream reads them back as Python floats
from a tensor in the model dtype), plus a final 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

log = logging.getLogger(__name__)

MAX_TURBO_STEPS = 20
VALID_SHIFTS = (1.0, 2.0, 3.0)


def _table(shift: int) -> tuple[float, ...]:
    us = [Fraction(8 - i, 8) for i in range(8)]
    return tuple(float(shift * u / (1 + (shift - 1) * u)) for u in us)


# The turbo tables (8 entries, final 0 implicit): s·u/(1+(s−1)u) for u = 1, 7/8, …, 1/8,
# as correctly rounded doubles (equal to upstream's literals).
SHIFT_TABLES: dict[float, tuple[float, ...]] = {float(s): _table(s) for s in (1, 2, 3)}
# The 20 distinct values of the three tables, largest first (nearest-value ties go to the larger).
VALID_TIMESTEPS: tuple[float, ...] = tuple(sorted({t for tab in SHIFT_TABLES.values() for t in tab}, reverse=True))


@dataclass(frozen=True)
class Schedule:
    """Times t_0 > … > t_{n-1} (model-dtype values as floats) and the final 0.

    `raw` holds the values before dtype rounding where upstream keeps them (turbo: the Python list
    that the cover-noise start searches); `cover_basis` is the step count that `audio_cover_strength`
    multiplies before any cover-noise truncation."""

    times: tuple[float, ...]  # n + 1 values, last is the end point (0 unless custom)
    raw: tuple[float, ...]
    turbo: bool
    cover_basis: int

    @property
    def num_steps(self) -> int:
        return len(self.times) - 1

    def nearest_start(self, level: float) -> int:
        """Index of the start time nearest to `level` (ties → earlier), among t_0 … t_{n-1}."""
        values = self.raw[: self.num_steps] if self.turbo else self.times[: self.num_steps]
        return min(range(len(values)), key=lambda i: abs(values[i] - level))

    def truncate(self, start: int) -> Schedule:
        return Schedule(self.times[start:], self.raw[start:], self.turbo, len(self.times) - 1 - start)

    def start_value(self, start: int) -> float:
        """The t used to noise the source for a cover-noise start (turbo: unrounded)."""
        return (self.raw if self.turbo else self.times)[start]


def _round(values: Sequence[float], dtype: torch.dtype) -> tuple[float, ...]:
    """Python floats → a tensor in the model dtype → Python floats, as upstream reads them back."""
    return tuple(torch.tensor(list(values), dtype=dtype).tolist())


def round_scalar(value: float, dtype: torch.dtype) -> float:
    """`value * torch.ones(..., dtype)` as a float: through fp32, then the model dtype."""
    return torch.tensor(value, dtype=torch.float32).to(dtype).item()


def snap_turbo_timesteps(timesteps: Sequence[float]) -> list[float]:
    """Custom turbo timesteps: trailing zeros dropped, at most 20 kept, each snapped to the nearest
    of the 20 valid values (ties → the earlier, larger value)."""
    values = [float(t) for t in timesteps]
    while values and values[-1] == 0:
        values.pop()
    if len(values) > MAX_TURBO_STEPS:
        log.warning("%d custom timesteps given; keeping the first %d", len(values), MAX_TURBO_STEPS)
        values = values[:MAX_TURBO_STEPS]
    return [min(VALID_TIMESTEPS, key=lambda v, t=t: abs(v - t)) for t in values]


def turbo_times(steps: int | None, shift: float, timesteps: Sequence[float] | None = None) -> list[float]:
    """The turbo schedule as Python floats (without the final 0).

    Order of precedence as upstream: custom timesteps; else `steps` > 0 → the shift formula with
    the raw shift (continuous shift works); else (the older revision) the fixed 8-entry table of the
    shift snapped to 1/2/3 (ties → lower)."""
    if timesteps is not None:
        snapped = snap_turbo_timesteps(timesteps)
        if snapped:
            return snapped
        log.warning("custom timesteps empty after dropping trailing zeros; using the shift schedule")
    if steps is not None and steps > 0:
        n = min(int(steps), MAX_TURBO_STEPS)
        out = []
        for i in range(n):
            u = 1.0 - i / n
            out.append(shift * u / (1 + (shift - 1) * u) if shift != 1.0 else u)
        return out
    snapped_shift = min(VALID_SHIFTS, key=lambda s: abs(s - shift))
    if snapped_shift != shift:
        log.warning("turbo shift %.3g snapped to %.0f (table schedule)", shift, snapped_shift)
    return list(SHIFT_TABLES[snapped_shift])


def turbo_schedule(
    steps: int | None, shift: float, timesteps: Sequence[float] | None, dtype: torch.dtype
) -> Schedule:
    raw = turbo_times(steps, shift, timesteps)
    times = _round(raw, dtype)
    return Schedule(times + (0.0,), tuple(raw) + (0.0,), True, len(raw))


def cfg_schedule(
    steps: int, shift: float, timesteps: Sequence[float] | None, dtype: torch.dtype
) -> Schedule:
    """Base/SFT/XL schedule: custom timesteps verbatim (include the final 0), else
    linspace(1, 0, steps + 1) and the shift map, both computed as model-dtype tensor ops.

    `cover_basis` follows the 2B *base* file, which multiplies the caller's `steps` (not the
    custom schedule's length) by `audio_cover_strength`; the sft and XL files use the length of
    the custom schedule. The two differ only with custom timesteps of another length."""
    if timesteps is not None:
        t = torch.tensor([float(v) for v in timesteps], dtype=torch.float32).to(dtype)
    else:
        t = torch.linspace(1.0, 0.0, int(steps) + 1, dtype=dtype)
        if shift != 1.0:
            t = shift * t / (1 + (shift - 1) * t)
    times = tuple(t.tolist())
    return Schedule(times, times, False, int(steps) if steps else len(times) - 1)

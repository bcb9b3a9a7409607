"""Turbo and CFG timestep schedules: shape, end points, monotonicity, the
continuous shift formula, the upstream tables, and custom-timestep snapping."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from songstep.sampling.schedules import (
    MAX_TURBO_STEPS,
    SHIFT_TABLES,
    VALID_TIMESTEPS,
    Schedule,
    cfg_schedule,
    snap_turbo_timesteps,
    turbo_schedule,
    turbo_times,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
shifts = st.floats(min_value=0.1, max_value=10.0, allow_nan=False, allow_infinity=False)

# upstream's literal tables, as exact fractions
UPSTREAM_TABLES = {
    1.0: [Fraction(1), Fraction(7, 8), Fraction(3, 4), Fraction(5, 8), Fraction(1, 2), Fraction(3, 8), Fraction(1, 4),
          Fraction(1, 8)],
    2.0: [Fraction(1), Fraction(14, 15), Fraction(6, 7), Fraction(10, 13), Fraction(2, 3), Fraction(6, 11), Fraction(2, 5),
          Fraction(2, 9)],
    3.0: [Fraction(1), Fraction(21, 22), Fraction(9, 10), Fraction(5, 6), Fraction(3, 4), Fraction(9, 14), Fraction(1, 2),
          Fraction(3, 10)],
}
BF16_TABLES = {
    3.0: (1.0, 0.953125, 0.8984375, 0.83203125, 0.75, 0.64453125, 0.5, 0.30078125),
    2.0: (1.0, 0.93359375, 0.85546875, 0.76953125, 0.66796875, 0.546875, 0.400390625, 0.22265625),
    1.0: (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125),
}


# ----------------------------------------------------------------------------------------------
# turbo: shift formula


@settings(max_examples=200, deadline=None)
@given(steps=st.integers(1, 60), shift=shifts)
def test_turbo_times_shape_ends_and_monotone(steps: int, shift: float) -> None:
    raw = turbo_times(steps, shift)
    assert len(raw) == min(steps, MAX_TURBO_STEPS)
    assert raw[0] == pytest.approx(1.0, abs=1e-12)  # s·1/(1 + (s−1)·1) in float64
    assert all(a > b for a, b in zip(raw, raw[1:]))
    assert raw[-1] > 0.0  # the final 0 is the loop's x0 jump, not a listed time


@settings(max_examples=150, deadline=None)
@given(steps=st.integers(1, 60), shift=shifts, dtype=st.sampled_from(DTYPES))
def test_turbo_schedule_in_model_dtype(steps: int, shift: float, dtype: torch.dtype) -> None:
    sched = turbo_schedule(steps, shift, None, dtype)
    n = min(steps, MAX_TURBO_STEPS)
    assert sched.turbo and sched.num_steps == n and len(sched.times) == n + 1
    assert sched.times[0] == 1.0  # exactly, after rounding to the model dtype
    assert sched.times[-1] == 0.0 and sched.raw[-1] == 0.0
    assert all(a > b for a, b in zip(sched.times, sched.times[1:]))
    # the listed times are the raw floats rounded once to the dtype
    rounded = torch.tensor(list(sched.raw[:-1]), dtype=dtype).tolist()
    assert list(sched.times[:-1]) == rounded
    assert sched.cover_basis == n


@pytest.mark.parametrize("shift", [0.5, 1.0, 1.7, 2.5, 3.0, 4.25])
@pytest.mark.parametrize("steps", [1, 3, 8, 13, 20])
def test_turbo_shift_formula_values(steps: int, shift: float) -> None:
    raw = turbo_times(steps, shift)
    for i, t in enumerate(raw):
        u = Fraction(steps - i, steps)
        s = Fraction(shift)
        assert t == pytest.approx(float(s * u / (1 + (s - 1) * u)), rel=1e-15)


def test_turbo_continuous_shift_example() -> None:
    assert turbo_times(5, 2.5) == pytest.approx([1.0, 0.90909, 0.78947, 0.625, 0.38462], abs=5e-6)
    assert turbo_times(5, 2.5) == pytest.approx([1.0, 10 / 11, 15 / 19, 5 / 8, 5 / 13], rel=1e-15)


def test_turbo_steps_capped_at_20() -> None:
    assert len(turbo_times(27, 3.0)) == 20
    assert turbo_times(27, 3.0) == turbo_times(20, 3.0)


@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_turbo_8_steps_equal_upstream_tables(shift: float) -> None:
    expected = [float(f) for f in UPSTREAM_TABLES[shift]]
    assert turbo_times(8, shift) == expected  # bit for bit in float64
    assert list(SHIFT_TABLES[shift]) == expected
    assert turbo_times(None, shift) == expected  # the table path
    assert turbo_times(0, shift) == expected


@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_turbo_tables_after_bf16_rounding(shift: float) -> None:
    sched = turbo_schedule(8, shift, None, torch.bfloat16)
    assert sched.times == BF16_TABLES[shift] + (0.0,)
    assert turbo_schedule(None, shift, None, torch.bfloat16).times == BF16_TABLES[shift] + (0.0,)
    # raw keeps the unrounded floats (the cover-noise start searches those)
    assert sched.raw == tuple(float(f) for f in UPSTREAM_TABLES[shift]) + (0.0,)


def test_turbo_fp32_tables_and_shift1_exact() -> None:
    assert turbo_schedule(8, 1.0, None, torch.bfloat16).times == (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0)
    fp32 = turbo_schedule(8, 3.0, None, torch.float32).times
    assert fp32[:-1] == tuple(torch.tensor([float(f) for f in UPSTREAM_TABLES[3.0]], dtype=torch.float32).tolist())


@pytest.mark.parametrize(
    "shift,table",
    [(1.6, 2.0), (1.5, 1.0), (2.5, 2.0), (0.2, 1.0), (1.49, 1.0), (2.51, 3.0), (7.0, 3.0), (3.0, 3.0)],
)
def test_table_path_snaps_shift(shift: float, table: float) -> None:
    """Without steps (older revision) the shift snaps to the nearest of 1/2/3, ties to the lower."""
    assert turbo_times(None, shift) == list(SHIFT_TABLES[table])
    assert turbo_times(0, shift) == list(SHIFT_TABLES[table])


# ----------------------------------------------------------------------------------------------
# turbo: custom timesteps


def test_valid_timesteps_are_the_20_table_values() -> None:
    union = {float(f) for tab in UPSTREAM_TABLES.values() for f in tab}
    assert len(VALID_TIMESTEPS) == 20
    assert set(VALID_TIMESTEPS) == union
    assert list(VALID_TIMESTEPS) == sorted(union, reverse=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-0.5, max_value=1.5, allow_nan=False), min_size=1, max_size=30))
def test_snap_picks_nearest_valid_value(values: list[float]) -> None:
    while values and values[-1] == 0:
        values = values[:-1]
    out = snap_turbo_timesteps(values)
    kept = values[:MAX_TURBO_STEPS]
    assert len(out) == len(kept)
    for t, s in zip(kept, out):
        assert s in VALID_TIMESTEPS
        best = min(abs(v - t) for v in VALID_TIMESTEPS)
        assert abs(s - t) == best
        # ties go to the larger value
        assert s == max(v for v in VALID_TIMESTEPS if abs(v - t) == best)


@pytest.mark.parametrize(
    "t,expected",
    [(0.45, 0.5), (0.3875, 0.4), (0.9772727272727273, 1.0), (0.5227272727272727, 0.5454545454545454),
     (0.44, 0.4), (0.46, 0.5), (0.0001, 0.125), (1.7, 1.0), (-3.0, 0.125), (0.9, 0.9)],
)
def test_snap_examples_and_ties(t: float, expected: float) -> None:
    assert snap_turbo_timesteps([t]) == [expected]


def test_snap_drops_trailing_zeros_only() -> None:
    assert snap_turbo_timesteps([1.0, 0.0, 0.5, 0.0, 0.0]) == [1.0, 0.125, 0.5]
    assert snap_turbo_timesteps([0.0, 0.0]) == []
    assert snap_turbo_timesteps([0.97, 0.74, 0.0]) == [0.9545454545454546, 0.75]


def test_snap_truncates_to_20() -> None:
    values = [1.0 - i / 40 for i in range(30)]
    out = snap_turbo_timesteps(values)
    assert len(out) == 20
    assert out == snap_turbo_timesteps(values[:20])


def test_custom_turbo_timesteps_take_precedence_and_fall_back() -> None:
    assert turbo_times(8, 3.0, [0.97, 0.52, 0.2, 0.0]) == [0.9545454545454546, 0.5, 0.2222222222222222]
    # all zeros → empty after dropping → the shift schedule
    assert turbo_times(8, 3.0, [0.0, 0.0]) == turbo_times(8, 3.0)
    sched = turbo_schedule(8, 3.0, [0.97, 0.52, 0.2, 0.0], torch.bfloat16)
    assert sched.num_steps == 3 and sched.cover_basis == 3
    assert sched.times[-1] == 0.0 and sched.raw[:-1] == (0.9545454545454546, 0.5, 0.2222222222222222)


# ----------------------------------------------------------------------------------------------
# CFG (base / sft / XL) schedules


@settings(max_examples=150, deadline=None)
@given(steps=st.integers(1, 100), shift=shifts, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_cfg_schedule_shape_ends_monotone(steps: int, shift: float, dtype: torch.dtype) -> None:
    sched = cfg_schedule(steps, shift, None, dtype)
    assert not sched.turbo
    assert len(sched.times) == steps + 1 and sched.num_steps == steps
    assert sched.times[-1] == 0.0
    # shift·1/(1 + (shift−1)·1) evaluated as dtype tensor ops: 1 up to a couple of ulps
    assert abs(sched.times[0] - 1.0) <= 2 * torch.finfo(dtype).eps
    assert all(a > b for a, b in zip(sched.times, sched.times[1:]))
    assert sched.cover_basis == steps


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 100), dtype=st.sampled_from(DTYPES + [torch.float64]))
def test_cfg_schedule_unshifted_is_linspace(steps: int, dtype: torch.dtype) -> None:
    sched = cfg_schedule(steps, 1.0, None, dtype)
    assert sched.times == tuple(torch.linspace(1.0, 0.0, steps + 1, dtype=dtype).tolist())
    assert sched.times[0] == 1.0 and sched.times[-1] == 0.0


@pytest.mark.parametrize("shift", [2.0, 3.0, 5.0])
@pytest.mark.parametrize("steps", [1, 8, 30])
def test_cfg_integer_shift_starts_exactly_at_1(steps: int, shift: float) -> None:
    for dtype in DTYPES:
        sched = cfg_schedule(steps, shift, None, dtype)
        assert sched.times[0] == 1.0 and sched.times[-1] == 0.0


def test_cfg_shift_is_evaluated_as_dtype_ops() -> None:
    t = torch.linspace(1.0, 0.0, 9, dtype=torch.bfloat16)
    expected = (3.0 * t / (1 + 2.0 * t)).tolist()
    assert cfg_schedule(8, 3.0, None, torch.bfloat16).times == tuple(expected)
    # 8 steps / shift 3 in bf16 equal the turbo bf16 table
    assert cfg_schedule(8, 3.0, None, torch.bfloat16).times == BF16_TABLES[3.0] + (0.0,)


def test_cfg_custom_timesteps_verbatim() -> None:
    custom = [1.0, 0.7, 0.33, 0.0]
    sched = cfg_schedule(30, 3.0, custom, torch.float32)
    assert sched.times == tuple(torch.tensor(custom, dtype=torch.float32).tolist())
    assert sched.num_steps == 3
    # the 2B base file's cover_steps uses the caller's steps, not the custom length
    assert sched.cover_basis == 30
    # without a final 0 the schedule simply ends at the last value
    assert cfg_schedule(30, 1.0, [1.0, 0.5], torch.float32).times == (1.0, 0.5)


# ----------------------------------------------------------------------------------------------
# Schedule helpers (cover-noise start)


def test_nearest_start_and_truncate_turbo() -> None:
    sched = turbo_schedule(8, 3.0, None, torch.bfloat16)
    assert sched.nearest_start(0.5) == 6
    assert sched.nearest_start(1.0) == 0
    assert sched.nearest_start(0.0) == 7
    # turbo searches the raw floats: 0.9265 is nearer raw 0.9 than raw 21/22, while on the bf16
    # values it would be nearer 0.953125 than 0.8984375
    assert sched.nearest_start(0.9265) == 2
    assert sched.start_value(1) == 0.9545454545454546  # unrounded
    cut = sched.truncate(5)
    assert cut.times == sched.times[5:] and cut.raw == sched.raw[5:]
    assert cut.num_steps == 3 and cut.cover_basis == 3 and cut.turbo


def test_nearest_start_ties_go_to_the_earlier_entry() -> None:
    sched = Schedule((1.0, 0.5, 0.0), (1.0, 0.5, 0.0), False, 2)
    assert sched.nearest_start(0.75) == 0


def test_nearest_start_cfg_uses_rounded_times() -> None:
    sched = cfg_schedule(4, 1.0, None, torch.float32)
    assert sched.nearest_start(0.3) == 3  # 0.25
    assert sched.start_value(3) == 0.25
    assert sched.truncate(3).times == (0.25, 0.0)

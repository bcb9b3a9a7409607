"""The sampling loops over toy velocity functions (no DiT): exact trajectories for constant and
x0-predicting velocities, Heun/SDE call and draw counts, cover start and condition switch, repaint
injection and crossfade, velocity clamp/EMA, guidance inside the loop, options validation, and
flow-edit's call/draw pattern."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from songstep.sampling.dcw import DCWOptions
from songstep.sampling.flow import (
    Repaint,
    SamplerOptions,
    blend_boundaries,
    crossfade_mask,
    inject_source,
    sample,
)
from songstep.sampling.flowedit import flow_edit
from songstep.sampling.guidance import apg, cfg
from songstep.sampling.noise import NoiseStream, generators_from_seed
from songstep.sampling.schedules import Schedule, cfg_schedule, turbo_schedule

B, T, C = 2, 10, 4
OFF = DCWOptions(enabled=False)
F32 = torch.float32


class Toy:
    """A velocity callable that records every call: (x, t, branch, corrector)."""

    def __init__(self, fn, uncond=None) -> None:
        self.fn, self.uncond, self.calls = fn, uncond, []

    def __call__(self, x, t, branch, corrector=False):
        self.calls.append((x.clone(), t, branch, corrector))
        u = None if self.uncond is None else self.uncond(x, t, branch)
        return self.fn(x, t, branch), u

    @property
    def inputs(self):
        return [c[0] for c in self.calls]

    @property
    def times(self):
        return [c[1] for c in self.calls]

    @property
    def branches(self):
        return [c[2] for c in self.calls]

    @property
    def correctors(self):
        return [c[3] for c in self.calls]


def _randn(*shape, seed: int, dtype=F32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _opts(**kw) -> SamplerOptions:
    kw.setdefault("dcw", OFF)
    return SamplerOptions(**kw)


def _turbo(n: int = 8, shift: float = 3.0, dtype=F32) -> Schedule:
    return turbo_schedule(n, shift, None, dtype)


def _cfg(n: int = 6, shift: float = 1.0, dtype=F32) -> Schedule:
    return cfg_schedule(n, shift, None, dtype)


def _dt(sched: Schedule, i: int) -> float:
    return torch.tensor(sched.times[i] - sched.times[i + 1], dtype=F32).item()


# ----------------------------------------------------------------------------------------------
# crossfade / blend / injection


def test_crossfade_mask_ramps() -> None:
    mask = torch.zeros(3, 25, dtype=torch.bool)
    mask[0, 5:15] = True
    mask[1, 0:10] = True  # window at 0: no left ramp
    soft = crossfade_mask(mask, 3)
    assert soft.dtype == torch.float32 and soft.shape == (3, 25)
    row = soft[0].tolist()
    assert row[:2] == [0.0, 0.0]
    assert row[2:5] == pytest.approx([0.25, 0.5, 0.75])
    assert row[5:15] == [1.0] * 10
    assert row[15:18] == pytest.approx([0.75, 0.5, 0.25])
    assert row[18:] == [0.0] * 7
    row = soft[1].tolist()
    assert row[:10] == [1.0] * 10
    assert row[10:13] == pytest.approx([0.75, 0.5, 0.25])
    assert row[13:] == [0.0] * 12
    assert soft[2].tolist() == [0.0] * 25  # no window: stays 0


def test_crossfade_ramp_shortened_at_the_edges() -> None:
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 2:11] = True
    soft = crossfade_mask(mask, 4)[0].tolist()
    # two frames before the start: linspace(0, 1, 4)[1:-1]; one after the end: linspace(1, 0, 3)[1:-1]
    assert soft[:2] == pytest.approx([1 / 3, 2 / 3])
    assert soft[11] == pytest.approx(0.5)
    full = torch.ones(1, 12, dtype=torch.bool)
    assert crossfade_mask(full, 4).tolist() == [[1.0] * 12]


def test_crossfade_default_ten_frames() -> None:
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, 15:25] = True
    soft = crossfade_mask(mask, 10)[0]
    torch.testing.assert_close(soft[5:15], torch.linspace(0, 1, 12)[1:-1])
    torch.testing.assert_close(soft[25:35], torch.linspace(1, 0, 12)[1:-1])
    assert soft[:5].abs().sum() == 0 and soft[35:].abs().sum() == 0


def test_blend_is_fp32_and_mixes_with_clean() -> None:
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 3:6] = True
    clean = _randn(B, T, C, seed=1, dtype=torch.bfloat16)
    x = _randn(B, T, C, seed=2, dtype=torch.bfloat16)
    out = blend_boundaries(x, Repaint(mask, clean), 2)
    assert out.dtype == torch.float32
    m = crossfade_mask(mask, 2)[..., None]
    torch.testing.assert_close(out, m * x.float() + (1 - m) * clean.float())
    assert torch.equal(out[:, 3:6], x[:, 3:6].float())
    assert torch.equal(out[:, 8:], clean[:, 8:].float())


def test_inject_source_keeps_the_window() -> None:
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:5] = True
    mask[1, 7:] = True
    x, clean, noise = (_randn(B, T, C, seed=s) for s in (1, 2, 3))
    out = inject_source(x, Repaint(mask, clean), 0.3, noise)
    expected = torch.where(mask[..., None], x, 0.3 * noise + 0.7 * clean)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# exact trajectories


@pytest.mark.parametrize("n,shift", [(1, 3.0), (4, 2.0), (8, 3.0), (13, 1.7)])
def test_turbo_constant_velocity_gives_noise_minus_v(n: int, shift: float) -> None:
    noise, v = _randn(B, T, C, seed=1), _randn(B, T, C, seed=2)
    sched = _turbo(n, shift)
    toy = Toy(lambda x, t, b: v)
    out = sample(toy, noise, sched, _opts())
    torch.testing.assert_close(out, noise - v, atol=1e-6, rtol=0)
    assert len(toy.calls) == n
    assert toy.times == list(sched.times[:-1])
    # each Euler step moves by v·bf16/fp32(t − t_next)
    for i in range(n - 1):
        torch.testing.assert_close(toy.inputs[i + 1], toy.inputs[i] - v * _dt(sched, i), atol=0, rtol=0)


def test_cfg_constant_velocity_gives_noise_minus_v() -> None:
    noise, v = _randn(B, T, C, seed=3), _randn(B, T, C, seed=4)
    for shift in (1.0, 3.0):
        sched = _cfg(7, shift)
        toy = Toy(lambda x, t, b: v)
        out = sample(toy, noise, sched, _opts())
        torch.testing.assert_close(out, noise - v, atol=2e-6, rtol=0)
        assert toy.times == list(sched.times[:-1])


def _x0_toy(c: torch.Tensor) -> Toy:
    """v = (x − c)/t: the x0 estimate x − v·t is c at every call."""
    return Toy(lambda x, t, b: (x - c) / t)


@pytest.mark.parametrize("kind", ["turbo", "cfg"])
def test_x0_predicting_velocity_lands_on_its_target(kind: str) -> None:
    noise, c = _randn(B, T, C, seed=5), _randn(B, T, C, seed=6)
    sched = _turbo(8) if kind == "turbo" else _cfg(6, 3.0)
    toy = _x0_toy(c)
    out = sample(toy, noise, sched, _opts())
    torch.testing.assert_close(out, c, atol=1e-5, rtol=0)
    for k, x in enumerate(toy.inputs):  # x_k = c + (noise − c)·t_k
        torch.testing.assert_close(x, c + (noise - c) * sched.times[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["turbo", "cfg"])
@pytest.mark.parametrize("dcw", [DCWOptions(), DCWOptions(mode="low", scaler=0.3), DCWOptions(mode="high", scaler=0.2)])
def test_dcw_is_identity_on_the_final_step(kind: str, dcw: DCWOptions) -> None:
    """The last step lands on the x0 estimate y itself, so d = x − y = 0."""
    noise = _randn(B, T, C, seed=7)
    sched = _turbo(5) if kind == "turbo" else _cfg(5, 2.0)
    toy = Toy(lambda x, t, b: 0.7 * x + torch.sin(x) + t)
    out = sample(toy, noise, sched, SamplerOptions(dcw=dcw))
    x_last, t_last = toy.inputs[-1], toy.times[-1]
    v_last = 0.7 * x_last + torch.sin(x_last) + t_last
    torch.testing.assert_close(out, x_last - v_last * t_last, atol=1e-6, rtol=1e-6)
    # ... while the earlier steps are corrected (DCW on differs from DCW off)
    off = sample(Toy(toy.fn), noise, sched, _opts())
    assert not torch.allclose(out, off, atol=1e-4)


def test_dcw_in_the_loop_uses_the_step_start_estimate() -> None:
    """Step i: x' = DCW(x − v·dt, x − v·t, t) with this step's t."""
    from songstep.sampling.dcw import apply_dcw

    noise = _randn(B, T, C, seed=8)
    sched = _turbo(3)
    fn = lambda x, t, b: 0.5 * x - t  # noqa: E731
    dcw = DCWOptions(scaler=0.4, high_scaler=0.3)
    toy = Toy(fn)
    sample(toy, noise, sched, SamplerOptions(dcw=dcw))
    x = noise
    for i in range(2):
        t = sched.times[i]
        v = fn(x, t, 0)
        x = apply_dcw(x - v * _dt(sched, i), x - v * t, t, dcw)
        torch.testing.assert_close(toy.inputs[i + 1], x, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# Heun and SDE


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), turbo=st.booleans())
def test_heun_call_counts(n: int, turbo: bool) -> None:
    sched = _turbo(n) if turbo else _cfg(n, 3.0)
    toy = Toy(lambda x, t, b: 0.1 * x)
    sample(toy, _randn(1, 4, 2, seed=n), sched, _opts(solver="heun"))
    assert len(toy.calls) == (2 * n - 1 if turbo else 2 * n)
    # predictor at t_i, corrector at t_{i+1}, alternating
    expected = []
    for i in range(n):
        expected.append((sched.times[i], False))
        if not (turbo and i == n - 1):
            expected.append((sched.times[i + 1], True))
    assert list(zip(toy.times, toy.correctors)) == expected


@pytest.mark.parametrize("kind", ["turbo", "cfg"])
def test_heun_linear_velocity_step_formula(kind: str) -> None:
    """v = a·x: one Heun step multiplies x by 1 − a·Δ + (a·Δ)²/2; turbo's last step is x − v·t."""
    a = 0.8
    noise = _randn(B, T, C, seed=9).double()
    sched = _turbo(4) if kind == "turbo" else _cfg(4, 2.0)
    out = sample(Toy(lambda x, t, b: a * x), noise, sched, _opts(solver="heun"))
    expected = noise.clone()
    for i in range(sched.num_steps):
        if kind == "turbo" and i == sched.num_steps - 1:
            expected = expected * (1 - a * sched.times[i])
        else:
            d = torch.tensor(sched.times[i] - sched.times[i + 1], dtype=torch.float64).item()
            expected = expected * (1 - a * d + (a * d) ** 2 / 2)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


def test_heun_with_sde_falls_back_to_euler() -> None:
    toy = Toy(lambda x, t, b: 0.1 * x)
    sample(toy, _randn(1, 4, 2, seed=1), _cfg(5), _opts(solver="heun", method="sde"))
    assert len(toy.calls) == 5 and not any(toy.correctors)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_turbo_sde_draws_one_noise_per_non_final_step(n: int) -> None:
    noise, c = _randn(B, T, C, seed=10), _randn(B, T, C, seed=11)
    sched = _turbo(n)
    stream = NoiseStream(generators_from_seed(3), record=True)
    toy = _x0_toy(c)
    out = sample(toy, noise, sched, _opts(method="sde"), sde_noise=stream)
    assert stream.draws is not None and len(stream.draws) == n - 1
    for i, eps in enumerate(stream.draws):  # x_{i+1} = t_{i+1}·ε_i + (1 − t_{i+1})·x0_i
        t_next = sched.times[i + 1]
        torch.testing.assert_close(toy.inputs[i + 1], t_next * eps + (1 - t_next) * c, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, c, atol=1e-5, rtol=0)


def test_cfg_sde_renoises_on_the_unshifted_grid() -> None:
    n = 5
    noise, c = _randn(B, T, C, seed=12), _randn(B, T, C, seed=13)
    sched = _cfg(n, 3.0)  # shifted times; SDE still uses 1 − (i+1)/n
    stream = NoiseStream(generators_from_seed(4), record=True)
    toy = _x0_toy(c)
    out = sample(toy, noise, sched, _opts(method="sde"), sde_noise=stream)
    assert stream.draws is not None and len(stream.draws) == n  # the last one is multiplied by 0
    for i in range(n - 1):
        s = 1.0 - (i + 1) / n
        torch.testing.assert_close(toy.inputs[i + 1], s * stream.draws[i] + (1 - s) * c, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, c, atol=1e-5, rtol=0)


def test_sde_default_noise_is_the_global_stream() -> None:
    noise, c = _randn(B, T, C, seed=14), _randn(B, T, C, seed=15)
    torch.manual_seed(0)
    a = sample(_x0_toy(c), noise, _turbo(3), _opts(method="sde"))
    torch.manual_seed(0)
    b = sample(_x0_toy(c), noise, _turbo(3), _opts(method="sde"))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# cover-noise start and condition switch


@pytest.mark.parametrize(
    "strength,start",
    [(0.5, 6), (0.1, 2), (0.05, 1), (0.99, 7), (1.0, 7), (0.001, 0)],
)
def test_cover_noise_start_turbo(strength: float, start: int) -> None:
    noise, source = _randn(B, T, C, seed=16), _randn(B, T, C, seed=17)
    sched = _turbo(8, 3.0, torch.bfloat16)
    toy = Toy(lambda x, t, b: torch.zeros_like(x))
    sample(toy, noise, sched, _opts(cover_noise_strength=strength), source=source)
    assert sched.nearest_start(1 - strength) == start
    assert toy.times == list(sched.times[start:-1])  # truncated: 8 − start calls
    t_star = sched.raw[start]  # the unrounded float (turbo)
    torch.testing.assert_close(toy.inputs[0], t_star * noise + (1 - t_star) * source, atol=0, rtol=0)


def test_cover_noise_start_uses_raw_turbo_time_not_the_rounded_one() -> None:
    noise, source = _randn(B, T, C, seed=18), _randn(B, T, C, seed=19)
    sched = _turbo(8, 3.0, torch.bfloat16)
    toy = Toy(lambda x, t, b: torch.zeros_like(x))
    sample(toy, noise, sched, _opts(cover_noise_strength=0.05), source=source)
    assert toy.times[0] == 0.953125  # the DiT sees the bf16 time ...
    expected = (21 / 22) * noise + (1 - 21 / 22) * source  # ... the start uses 21/22
    torch.testing.assert_close(toy.inputs[0], expected, atol=0, rtol=0)


def test_cover_noise_start_cfg_and_missing_source() -> None:
    noise, source = _randn(B, T, C, seed=20), _randn(B, T, C, seed=21)
    sched = _cfg(10, 1.0)
    toy = Toy(lambda x, t, b: torch.zeros_like(x))
    sample(toy, noise, sched, _opts(cover_noise_strength=0.3), source=source)
    assert toy.times[0] == sched.times[3] and len(toy.calls) == 7
    torch.testing.assert_close(toy.inputs[0], sched.times[3] * noise + (1 - sched.times[3]) * source, atol=0, rtol=0)
    with pytest.raises(ValueError):
        sample(toy, noise, sched, _opts(cover_noise_strength=0.3))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), strength=st.floats(min_value=0.0, max_value=1.0), turbo=st.booleans(),
       heun=st.booleans())
def test_condition_switch_at_int_n_strength(n: int, strength: float, turbo: bool, heun: bool) -> None:
    sched = _turbo(n) if turbo else _cfg(n)
    toy = Toy(lambda x, t, b: 0.1 * x)
    sample(toy, _randn(1, 2, 2, seed=0), sched, _opts(cover_strength=strength, solver="heun" if heun else "euler"))
    switch = int(n * strength)
    per_step: list[int] = []
    for i in range(n):
        per_step.append(0 if i < switch else 1)
        if heun and not (turbo and i == n - 1):
            per_step.append(per_step[-1])  # the corrector uses the same condition
    assert toy.branches == per_step


def test_condition_switch_counts_steps_after_cover_truncation() -> None:
    sched = _turbo(8)
    toy = Toy(lambda x, t, b: torch.zeros_like(x))
    src = _randn(1, 2, 2, seed=1)
    # start at index 4 (0.75) → 4 steps left; int(4·0.5) = 2 steps on the cover condition
    sample(toy, _randn(1, 2, 2, seed=0), sched, _opts(cover_noise_strength=0.25, cover_strength=0.5), source=src)
    assert toy.branches == [0, 0, 1, 1]


def test_cfg_cover_basis_is_the_callers_steps_with_custom_timesteps() -> None:
    sched = cfg_schedule(8, 1.0, [1.0, 0.75, 0.5, 0.25, 0.0], F32)  # 4 steps, basis 8
    toy = Toy(lambda x, t, b: torch.zeros_like(x))
    sample(toy, _randn(1, 2, 2, seed=0), sched, _opts(cover_strength=0.25))
    assert toy.branches == [0, 0, 1, 1]  # int(8·0.25) = 2


# ----------------------------------------------------------------------------------------------
# repaint


def _repaint_mask() -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 3:7] = True
    mask[1, 0:4] = True
    return mask


@pytest.mark.parametrize("n,ratio", [(8, 0.5), (5, 0.5), (7, 0.5), (6, 0.0), (6, 1.0), (4, 0.3)])
@pytest.mark.parametrize("turbo", [True, False])
def test_repaint_injection_steps(n: int, ratio: float, turbo: bool) -> None:
    """With v = 0 only the injection moves x: outside the window the input to step i + 1 is the
    source noised to t_{i+1} while i < round(ratio·n) (half to even), then it stays put."""
    mask = _repaint_mask()
    noise, clean = _randn(B, T, C, seed=22), _randn(B, T, C, seed=23)
    sched = _turbo(n) if turbo else _cfg(n)
    toy = Toy(lambda x, t, b: torch.zeros_like(x))
    out = sample(toy, noise, sched, _opts(repaint_injection_ratio=ratio, repaint_crossfade_frames=0),
                 repaint=Repaint(mask, clean))
    cutoff = round(ratio * n)
    keep = mask[..., None]
    held = noise
    for i in range(n - 1):
        if i < cutoff:
            t_after = sched.times[i + 1]
            held = torch.where(keep, noise, t_after * noise + (1 - t_after) * clean)
        torch.testing.assert_close(toy.inputs[i + 1], held, atol=0, rtol=0)
    if not turbo and cutoff >= n:  # CFG: the last step injects at t = 0, i.e. the clean source
        held = torch.where(keep, noise, clean)
    # turbo never injects after its x0 jump
    torch.testing.assert_close(out, held, atol=0, rtol=0)


def test_repaint_window_follows_the_dynamics_and_blend_applies() -> None:
    mask = _repaint_mask()
    noise, clean, c = _randn(B, T, C, seed=24), _randn(B, T, C, seed=25), _randn(B, T, C, seed=26)
    sched = _turbo(8)
    toy = _x0_toy(c)
    rp = Repaint(mask, clean)
    out = sample(toy, noise, sched, _opts(repaint_crossfade_frames=0), repaint=rp)
    inside = mask[..., None].expand(B, T, C)
    for k, x in enumerate(toy.inputs):
        expected = c + (noise - c) * sched.times[k]
        torch.testing.assert_close(x[inside], expected[inside], atol=1e-5, rtol=0)
    torch.testing.assert_close(out, c, atol=1e-5, rtol=0)
    blended = sample(_x0_toy(c), noise, sched, _opts(repaint_crossfade_frames=3), repaint=rp)
    torch.testing.assert_close(blended, blend_boundaries(out, rp, 3), atol=1e-6, rtol=0)


def test_repaint_blend_promotes_to_fp32() -> None:
    mask = _repaint_mask()
    noise = _randn(B, T, C, seed=27, dtype=torch.bfloat16)
    clean = _randn(B, T, C, seed=28, dtype=torch.bfloat16)
    sched = _turbo(3, dtype=torch.bfloat16)
    toy = Toy(lambda x, t, b: torch.zeros_like(x))
    out = sample(toy, noise, sched, _opts(), repaint=Repaint(mask, clean))
    assert out.dtype == torch.float32
    plain = sample(toy, noise, sched, _opts(repaint_crossfade_frames=0), repaint=Repaint(mask, clean))
    assert plain.dtype == torch.bfloat16
    assert sample(toy, noise, sched, _opts()).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------
# velocity clamp and EMA


def test_velocity_clamp_formula() -> None:
    noise = _randn(B, T, C, seed=29)
    noise[1] *= 0.01  # a quiet item gets clamped harder
    v = torch.full((B, T, C), 3.0)
    tau = 0.5
    sched = _turbo(2, 1.0)  # times 1, 0.5
    toy = Toy(lambda x, t, b: v)
    out = sample(toy, noise, sched, _opts(velocity_norm_threshold=tau))
    x_norm = noise.norm(dim=(1, 2), keepdim=True) + 1e-10
    v_norm = v.norm(dim=(1, 2), keepdim=True)
    factor = torch.clamp(tau * x_norm / (v_norm + 1e-10), max=1.0)
    x1 = noise - v * factor * 0.5
    torch.testing.assert_close(toy.inputs[1], x1, atol=1e-6, rtol=0)
    x1n = x1.norm(dim=(1, 2), keepdim=True) + 1e-10
    x0 = x1 - v * torch.clamp(tau * x1n / (v_norm + 1e-10), max=1.0) * 0.5
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)
    # a small velocity is not touched
    small = Toy(lambda x, t, b: 1e-4 * v)
    torch.testing.assert_close(sample(small, noise, sched, _opts(velocity_norm_threshold=tau)),
                               noise - 1e-4 * v, atol=1e-6, rtol=0)


def test_velocity_ema_formula() -> None:
    noise = _randn(B, T, C, seed=30)
    base = _randn(B, T, C, seed=31)
    f = 0.3
    sched = _turbo(4)
    toy = Toy(lambda x, t, b: (len(toy.calls)) * base)  # call k returns k·base
    out = sample(toy, noise, sched, _opts(velocity_ema_factor=f))
    x, prev = noise, None
    for i in range(4):
        v = (i + 1) * base
        v = v if prev is None else (1 - f) * v + f * prev
        prev = v
        x = x - v * (sched.times[i] if i == 3 else _dt(sched, i))
        if i < 3:
            torch.testing.assert_close(toy.inputs[i + 1], x, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_clamp_applies_before_ema() -> None:
    noise = _randn(1, T, C, seed=32)
    base = torch.full((1, T, C), 2.0)
    f, tau = 0.5, 0.2
    sched = _cfg(2)
    toy = Toy(lambda x, t, b: (len(toy.calls)) * base)
    out = sample(toy, noise, sched, _opts(velocity_ema_factor=f, velocity_norm_threshold=tau))

    def clamp(v, x):
        return v * torch.clamp(tau * (x.norm() + 1e-10) / (v.norm() + 1e-10), max=1.0)

    v0 = clamp(base, noise)
    x1 = noise - v0 * 0.5
    v1 = (1 - f) * clamp(2 * base, x1) + f * v0
    torch.testing.assert_close(out, x1 - v1 * 0.5, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# guidance in the loop


def test_cfg_guidance_respects_the_interval() -> None:
    noise = _randn(B, T, C, seed=33)
    a, b = _randn(B, T, C, seed=34), _randn(B, T, C, seed=35)
    sched = _cfg(4)  # times 1, 0.75, 0.5, 0.25
    toy = Toy(lambda x, t, br: a, uncond=lambda x, t, br: b)
    out = sample(toy, noise, sched, _opts(guidance="cfg", guidance_scale=3.0, cfg_interval=(0.3, 0.8)))
    x = noise
    for i in range(4):
        t = sched.times[i]
        v = cfg(a, b, 3.0) if 0.3 <= t <= 0.8 else a
        x = x - v * _dt(sched, i)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_apg_momentum_advances_once_per_guided_step_with_heun() -> None:
    noise = _randn(B, T, C, seed=36).double()
    sched = _cfg(4)
    cond_fn = lambda x, t, br: 0.5 * x + t  # noqa: E731
    unc_fn = lambda x, t, br: 0.2 * x - t  # noqa: E731
    toy = Toy(cond_fn, uncond=unc_fn)
    out = sample(toy, noise, sched, _opts(guidance="apg", guidance_scale=4.0, solver="heun", cfg_interval=(0.0, 0.8)))
    state: dict = {}
    x = noise
    for i in range(4):
        t, t_next = sched.times[i], sched.times[i + 1]
        d = torch.tensor(t - t_next, dtype=torch.float64).item()
        v = apg(cond_fn(x, t, 0), unc_fn(x, t, 0), 4.0, state) if t <= 0.8 else cond_fn(x, t, 0)
        xp = x - v * d
        c2, u2 = cond_fn(xp, t_next, 0), unc_fn(xp, t_next, 0)
        v2 = apg(c2, u2, 4.0, state, corrector=True) if t_next <= 0.8 else c2
        x = x - 0.5 * (v + v2) * d
    torch.testing.assert_close(out, x, atol=1e-12, rtol=1e-12)


def test_no_uncond_means_no_guidance() -> None:
    noise, v = _randn(B, T, C, seed=37), _randn(B, T, C, seed=38)
    out = sample(Toy(lambda x, t, b: v), noise, _cfg(3), _opts(guidance_scale=7.0))
    torch.testing.assert_close(out, noise - v, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# options and progress


@pytest.mark.parametrize(
    "kw", [dict(method="ddim"), dict(method="ODE"), dict(solver="rk4"), dict(solver="Heun"), dict(guidance="adg2"),
           dict(guidance="")],
)
def test_sampler_options_reject_unknown_names(kw: dict) -> None:
    with pytest.raises(ValueError):
        SamplerOptions(**kw)


def test_sampler_options_defaults_and_aliases() -> None:
    o = SamplerOptions()
    assert (o.steps, o.shift, o.method, o.solver, o.guidance, o.guidance_scale) == (8, 3.0, "ode", "euler", "apg", 1.0)
    assert (o.cfg_interval, o.cover_strength, o.cover_noise_strength) == ((0.0, 1.0), 1.0, 0.0)
    assert (o.repaint_injection_ratio, o.repaint_crossfade_frames) == (0.5, 10)
    assert (o.velocity_norm_threshold, o.velocity_ema_factor) == (0.0, 0.0)
    assert o.dcw == DCWOptions()
    for g in ("apg_classic", "cfg", "adg", "adg_w_norm", "adg_wo_clip"):
        SamplerOptions(guidance=g)


def test_progress_reports_each_step() -> None:
    seen: list = []
    sample(Toy(lambda x, t, b: x), _randn(1, 2, 2, seed=0), _turbo(5), _opts(), progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(1, 6)]


# ----------------------------------------------------------------------------------------------
# flow-edit


def _edit(n=10, n_min=0.2, n_max=0.6, n_avg=3, fn=None, guidance="apg", scale=1.0, seed=5):
    source = _randn(B, T, C, seed=40)
    toy = Toy(fn or (lambda x, t, b: 0.1 * x + b))
    stream = NoiseStream(generators_from_seed(seed), record=True)
    sched = _cfg(n)
    out = flow_edit(toy, source, sched, _opts(guidance=guidance, guidance_scale=scale),
                    n_min=n_min, n_max=n_max, n_avg=n_avg, forward_noise=stream)
    return out, toy, stream, sched, source


@pytest.mark.parametrize(
    "n,n_min,n_max,n_avg",
    [(10, 0.2, 0.6, 3), (10, 0.0, 1.0, 1), (8, 0.5, 0.5, 2), (6, 0.0, 0.0, 4), (12, 0.25, 1.0, 2), (7, 0.3, 0.9, 1)],
)
def test_flow_edit_call_and_draw_pattern(n: int, n_min: float, n_max: float, n_avg: int) -> None:
    _, toy, stream, sched, _ = _edit(n, n_min, n_max, n_avg)
    lo, hi = int(n * n_min), int(n * n_max)
    expected = []
    for i in range(lo, n):
        if i < hi:
            expected += [(sched.times[i], 0), (sched.times[i], 1)] * n_avg  # source then target
        else:
            expected.append((sched.times[i], 1))
    assert list(zip(toy.times, toy.branches)) == expected
    assert not any(toy.correctors)
    assert stream.draws is not None
    assert len(stream.draws) == n_avg * (hi - lo) + (1 if hi < n else 0)


def test_flow_edit_identical_branches_return_the_source() -> None:
    out, *_, source = _edit(10, 0.0, 1.0, 2, fn=lambda x, t, b: 0.3 * x - t)
    torch.testing.assert_close(out, source, atol=1e-6, rtol=0)  # z_tar = z_src up to rounding


def test_flow_edit_constant_velocities_closed_form() -> None:
    g = torch.Generator().manual_seed(41)
    va, vb = torch.randn(B, T, C, generator=g), torch.randn(B, T, C, generator=g)
    out, toy, stream, sched, source = _edit(10, 0.2, 0.6, 3, fn=lambda x, t, b: vb if b else va)
    lo, hi, n = 2, 6, 10

    def dt(i):
        return (torch.tensor(sched.times[i + 1]) - torch.tensor(sched.times[i])).item()

    z_edit = source.clone()
    for i in range(lo, hi):
        z_edit = z_edit + dt(i) * (vb - va)
        # each window draw is the forward noise of z_src = (1 − t)·x_src + t·ε
    t_hi = sched.times[hi]
    x_src_t = (1 - t_hi) * source + t_hi * stream.draws[-1]
    x = z_edit + x_src_t - source
    torch.testing.assert_close(toy.inputs[-(n - hi)], x, atol=1e-6, rtol=0)
    for i in range(hi, n):
        x = x + dt(i) * vb
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    # window inputs: z_src from the recorded draws, z_tar = z_edit + z_src − x_src
    z_src = (1 - sched.times[lo]) * source + sched.times[lo] * stream.draws[0]
    torch.testing.assert_close(toy.inputs[0], z_src, atol=1e-6, rtol=0)
    torch.testing.assert_close(toy.inputs[1], source + z_src - source, atol=1e-6, rtol=0)


def test_flow_edit_averages_the_draws() -> None:
    """v_src = x, v_tar = x + k: each draw gives v_tar − v_src = z_tar − z_src + k = e + k with
    e = z_edit − x_src, whatever the forward noise, so e ← e + dt·(e + k) step by step."""
    k = 0.25
    out, toy, stream, sched, source = _edit(8, 0.25, 1.0, 4, fn=lambda x, t, b: x + k * b)
    e = torch.zeros_like(source)
    for i in range(2, 8):
        dt = (torch.tensor(sched.times[i + 1]) - torch.tensor(sched.times[i])).item()
        e = e + dt * (e + k)
    assert stream.draws is not None and len(stream.draws) == 4 * 6
    torch.testing.assert_close(out, source + e, atol=1e-5, rtol=0)


def test_flow_edit_argument_checks() -> None:
    with pytest.raises(ValueError):
        _edit(n_avg=0)
    with pytest.raises(ValueError):
        _edit(n_min=0.7, n_max=0.6)
    with pytest.raises(ValueError):
        _edit(n_max=1.2)


def test_flow_edit_forces_apg_for_other_guidance() -> None:
    fn = lambda x, t, b: 0.2 * x + b  # noqa: E731
    unc = lambda x, t, b: -0.1 * x  # noqa: E731
    results = []
    for guidance in ("adg", "apg"):
        source = _randn(B, T, C, seed=40)
        toy = Toy(fn, uncond=unc)
        stream = NoiseStream(generators_from_seed(8), record=True)
        results.append(flow_edit(toy, source, _cfg(6), _opts(guidance=guidance, guidance_scale=5.0),
                                 n_min=0.0, n_max=0.5, n_avg=2, forward_noise=stream))
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)
    assert math.isfinite(results[0].abs().max().item())


def test_flow_edit_apg_momentum_snapshot_and_advance() -> None:
    """Per branch: every draw in a window step starts from the step's momentum snapshot m; after
    the step m ← mean(diff) − 0.75·m; after the window APG runs plainly (advancing per call)."""
    n, n_min, n_max, n_avg, scale = 8, 0.25, 0.75, 3, 4.0
    cond_fn = lambda x, t, b: 0.4 * x + (1 + b) * t  # noqa: E731
    unc_fn = lambda x, t, b: -0.2 * x + 0.1 * b  # noqa: E731
    source = _randn(B, T, C, seed=42).double()
    stream = NoiseStream(generators_from_seed(9), record=True)
    sched = _cfg(n, 2.0)
    out = flow_edit(Toy(cond_fn, uncond=unc_fn), source, sched, _opts(guidance="apg", guidance_scale=scale),
                    n_min=n_min, n_max=n_max, n_avg=n_avg, forward_noise=stream)
    assert stream.draws is not None
    draws = iter(stream.draws)
    lo, hi = int(n * n_min), int(n * n_max)
    m: dict[int, object] = {0: 0, 1: 0}
    z_edit, x_tar = source.clone(), None
    for i in range(lo, n):
        t = sched.times[i]
        dt = sched.times[i + 1] - t
        if i < hi:
            v_sum = {0: 0.0, 1: 0.0}
            d_sum = {0: 0.0, 1: 0.0}
            for _ in range(n_avg):
                eps = next(draws)
                z_src = (1 - t) * source + t * eps
                z = {0: z_src, 1: z_edit + z_src - source}
                for br in (0, 1):
                    c, u = cond_fn(z[br], t, br), unc_fn(z[br], t, br)
                    v_sum[br] = v_sum[br] + apg(c, u, scale, {"momentum": m[br]})
                    d_sum[br] = d_sum[br] + (c - u)
            for br in (0, 1):
                m[br] = d_sum[br] / n_avg - 0.75 * m[br]
            z_edit = z_edit + dt * (v_sum[1] / n_avg - v_sum[0] / n_avg)
        else:
            if x_tar is None:
                x_tar = z_edit + (1 - t) * source + t * next(draws) - source
            state = {"momentum": m[1]}
            x_tar = x_tar + dt * apg(cond_fn(x_tar, t, 1), unc_fn(x_tar, t, 1), scale, state)
            m[1] = state["momentum"]
    torch.testing.assert_close(out, x_tar, atol=1e-10, rtol=1e-10)

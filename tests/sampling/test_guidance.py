"""Guidance functions: CFG, APG by a hand computation in float64 (momentum,
norm clamp, projection along time), the Heun-corrector fallbacks, ADG's angle geometry, and the
registry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from songstep.sampling.guidance import (
    ADG_ANGLE_CLIP,
    APG_MOMENTUM,
    APG_NORM_THRESHOLD,
    GUIDANCE,
    apg,
    apg_update,
    cfg,
    get_guidance,
)


def _pair(seed: int, b: int = 2, t: int = 7, c: int = 5, dtype=torch.float64, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(b, t, c, generator=g, dtype=dtype)
    uncond = cond + spread * torch.randn(b, t, c, generator=g, dtype=dtype)
    return cond, uncond


# ----------------------------------------------------------------------------------------------
# CFG


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=0.0, max_value=20.0), st.integers(0, 10_000))
def test_cfg_formula(scale: float, seed: int) -> None:
    cond, uncond = _pair(seed)
    out = get_guidance("cfg")(cond, uncond, scale, {}, latents=cond, sigma=0.5)
    torch.testing.assert_close(out, uncond + scale * (cond - uncond), atol=0, rtol=0)
    if scale == 1.0:
        torch.testing.assert_close(out, cond, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------
# APG, by hand in float64


def _apg_reference(cond, uncond, scale, prev, *, momentum=APG_MOMENTUM, threshold=APG_NORM_THRESHOLD, eta=0.0):
    """Loop over (batch, channel); every vector runs along time."""
    cond, uncond = cond.double(), uncond.double()
    running = (cond - uncond) + momentum * prev
    out = torch.empty_like(cond)
    b, _, c = cond.shape
    for i in range(b):
        for k in range(c):
            d = running[i, :, k].clone()
            n = math.sqrt(float((d * d).sum()))
            d = d * min(1.0, threshold / n)
            cvec = cond[i, :, k]
            u = cvec / math.sqrt(float((cvec * cvec).sum()))
            par = float((d * u).sum()) * u
            orth = d - par
            out[i, :, k] = cvec + (scale - 1) * (orth + eta * par)
    return out, running


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=1.0, max_value=15.0), st.integers(0, 10_000), st.floats(min_value=0.05, max_value=3.0))
def test_apg_matches_hand_computation_with_momentum(scale: float, seed: int, spread: float) -> None:
    state: dict = {}
    prev = torch.zeros(2, 7, 5, dtype=torch.float64)
    for step in range(3):
        cond, uncond = _pair(seed + step, spread=spread)
        out = apg(cond, uncond, scale, state)
        expected, prev = _apg_reference(cond, uncond, scale, prev)
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
        # the buffer stores the running average before the norm clamp
        torch.testing.assert_close(state["momentum"], prev, atol=0, rtol=0)


def test_apg_momentum_accumulates_across_calls() -> None:
    (c1, u1), (c2, u2) = _pair(1), _pair(2)
    state: dict = {}
    apg(c1, u1, 5.0, state)
    torch.testing.assert_close(state["momentum"], c1 - u1)
    apg(c2, u2, 5.0, state)
    torch.testing.assert_close(state["momentum"], (c2 - u2) - 0.75 * (c1 - u1))
    assert APG_MOMENTUM == -0.75 and APG_NORM_THRESHOLD == 2.5


def test_apg_states_are_independent() -> None:
    (c1, u1), (c2, u2) = _pair(1), _pair(2)
    s1: dict = {}
    apg(c1, u1, 3.0, s1)
    fresh = apg(c2, u2, 3.0, {})
    warm = apg(c2, u2, 3.0, s1)
    assert not torch.allclose(fresh, warm)
    torch.testing.assert_close(fresh, _apg_reference(c2, u2, 3.0, torch.zeros_like(c2))[0], atol=1e-10, rtol=0)


def test_apg_norm_clamp_along_time() -> None:
    cond, uncond = _pair(3, spread=10.0)  # ‖diff‖ along time ≫ 2.5
    diff = cond - uncond
    assert (diff.norm(dim=1) > 2.5).all()
    # eta = 1 keeps the whole clamped diff: its norm along time is exactly the threshold
    upd = (apg_update(diff, cond, 2.0, eta=1.0) - cond)
    torch.testing.assert_close(upd.norm(dim=1), torch.full((2, 5), 2.5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(upd, diff * (2.5 / diff.norm(dim=1, keepdim=True)), atol=1e-12, rtol=0)
    # eta = 0: the orthogonal part of the clamped diff, never longer than the threshold
    upd0 = apg(cond, uncond, 2.0, {}) - cond
    assert (upd0.norm(dim=1) <= 2.5 + 1e-12).all()
    # a small diff is not rescaled
    small_c, small_u = _pair(4, spread=0.01)
    d = small_c - small_u
    torch.testing.assert_close(apg_update(d, small_c, 2.0, eta=1.0) - small_c, d, atol=1e-14, rtol=0)


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=1.5, max_value=15.0), st.integers(0, 10_000))
def test_apg_update_is_orthogonal_to_cond_along_time(scale: float, seed: int) -> None:
    cond, uncond = _pair(seed)
    update = (apg(cond, uncond, scale, {}) - cond) / (scale - 1)
    dots = (update * cond).sum(dim=1)  # per (batch, channel)
    assert dots.abs().max() < 1e-10
    # ... and it is not orthogonal along channels (the projection is per channel, along time)
    assert (update * cond).sum(dim=2).abs().max() > 1e-3


def test_apg_projection_runs_in_float64_for_fp32_inputs() -> None:
    cond, uncond = _pair(5, dtype=torch.float32)
    out = apg(cond, uncond, 4.0, {})
    assert out.dtype == torch.float32
    expected, _ = _apg_reference(cond, uncond, 4.0, torch.zeros_like(cond).double())
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=0)


def test_apg_as_corrector_is_cfg_and_keeps_momentum() -> None:
    cond, uncond = _pair(6)
    state: dict = {}
    apg(*_pair(7), 4.0, state)
    before = state["momentum"].clone()
    out = apg(cond, uncond, 4.0, state, corrector=True)
    torch.testing.assert_close(out, cfg(cond, uncond, 4.0), atol=0, rtol=0)
    assert torch.equal(state["momentum"], before)
    empty: dict = {}
    apg(cond, uncond, 4.0, empty, corrector=True)
    assert "momentum" not in empty


def test_apg_scale_one_returns_cond() -> None:
    cond, uncond = _pair(8)
    torch.testing.assert_close(apg(cond, uncond, 1.0, {}), cond, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# ADG


def _adg_inputs(seed: int, b: int = 2, t: int = 6, c: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g, dtype=torch.float64)
    cond = torch.randn(b, t, c, generator=g, dtype=torch.float64)
    uncond = torch.randn(b, t, c, generator=g, dtype=torch.float64)
    return x, cond, uncond


def _decompose(x, cond, uncond, out, sigma):
    """x̂ = x − σ·v_out as α·x̂_c + β·perp per frame (least squares over channels); also θ."""
    hat_c, hat_u = x - sigma * cond, x - sigma * uncond
    new = x - sigma * out
    diff = hat_c - hat_u
    proj = (diff * hat_u).sum(-1, keepdim=True) / (hat_u * hat_u).sum(-1, keepdim=True) * hat_u
    perp = diff - proj
    cos = (hat_c * hat_u).sum(-1) / (hat_c.norm(dim=-1) * hat_u.norm(dim=-1))
    theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
    basis = torch.stack([hat_c, perp], dim=-1)  # [b, t, c, 2]
    coef = torch.linalg.lstsq(basis, new.unsqueeze(-1)).solution.squeeze(-1)  # [b, t, 2]
    resid = (basis @ coef.unsqueeze(-1)).squeeze(-1) - new
    return coef[..., 0], coef[..., 1], theta, resid, hat_c


@pytest.mark.parametrize("scale", [1.1, 1.3, 2.0, 5.0, 12.0])
@pytest.mark.parametrize("name,clip", [("adg", ADG_ANGLE_CLIP), ("adg_wo_clip", None)])
def test_adg_rotates_by_the_clipped_angle(name: str, clip: float | None, scale: float) -> None:
    x, cond, uncond = _adg_inputs(int(scale * 10))
    sigma = 0.7
    out = get_guidance(name)(cond, uncond, scale, {}, latents=x, sigma=sigma)
    assert out.shape == cond.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    alpha, beta, theta, resid, _ = _decompose(x, cond, uncond, out, sigma)
    assert resid.abs().max() < 1e-5
    w = scale - 1 + 1e-3
    theta_new = w * theta if clip is None else (w * theta).clamp(max=clip)
    torch.testing.assert_close(alpha, torch.cos(theta_new), atol=1e-5, rtol=0)
    torch.testing.assert_close(beta, torch.sin(theta_new) / torch.sin(theta), atol=1e-5, rtol=0)
    if clip is not None:
        assert (torch.acos(alpha.clamp(-1, 1)) <= 3.14 / 6 + 1e-4).all()


def test_adg_clip_literal_is_3_14() -> None:
    assert ADG_ANGLE_CLIP == 3.14 / 6
    assert ADG_ANGLE_CLIP != math.pi / 6


def test_adg_w_norm_keeps_norm_along_time_and_uses_wider_clip() -> None:
    x, cond, uncond = _adg_inputs(3)
    sigma = 0.4
    out = get_guidance("adg_w_norm")(cond, uncond, 9.0, {}, latents=x, sigma=sigma)
    new, hat_c = x - sigma * out, x - sigma * cond
    torch.testing.assert_close(new.norm(dim=1), hat_c.norm(dim=1), atol=1e-5, rtol=1e-5)
    # without the rescale, the per-frame rotation angle is clip 3.14/3 (w·θ ≫ clip here)
    plain = get_guidance("adg")(cond, uncond, 9.0, {}, latents=x, sigma=sigma)
    assert not torch.allclose(out, plain)


def test_adg_scale_one_is_close_to_cond() -> None:
    x, cond, uncond = _adg_inputs(4)
    out = get_guidance("adg")(cond, uncond, 1.0, {}, latents=x, sigma=0.5)  # w = 1e-3
    strong = get_guidance("adg")(cond, uncond, 4.0, {}, latents=x, sigma=0.5)
    err = (out - cond).abs().max().item()
    assert err < 0.05 * cond.abs().max().item()
    assert err < 0.05 * (strong - cond).abs().max().item()
    # cond == uncond → no perpendicular part; cos θ is clamped to 1 − 1e-6, so x̂ = cos(w·θ₀)·x̂_c
    same = get_guidance("adg")(cond, cond.clone(), 7.0, {}, latents=x, sigma=0.5)
    theta0 = math.acos(1 - 1e-6)
    expected = (x - math.cos((6 + 1e-3) * theta0) * (x - 0.5 * cond)) / 0.5
    torch.testing.assert_close(same, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(same, cond, atol=1e-3, rtol=0)


def test_adg_fp32_and_bf16_inputs_give_finite_outputs_of_the_latent_dtype() -> None:
    x, cond, uncond = _adg_inputs(5)
    for dtype in (torch.float32, torch.bfloat16):
        out = get_guidance("adg")(cond.to(dtype), uncond.to(dtype), 5.0, {}, latents=x.to(dtype), sigma=0.25)
        assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_adg_corrector_falls_back_to_cfg_only_at_sigma_zero() -> None:
    x, cond, uncond = _adg_inputs(6)
    for name in ("adg", "adg_w_norm", "adg_wo_clip"):
        fn = get_guidance(name)
        at0 = fn(cond, uncond, 3.0, {}, latents=x, sigma=0.0, corrector=True)
        torch.testing.assert_close(at0, cfg(cond, uncond, 3.0), atol=0, rtol=0)
        pred = fn(cond, uncond, 3.0, {}, latents=x, sigma=0.3, corrector=True)
        torch.testing.assert_close(pred, fn(cond, uncond, 3.0, {}, latents=x, sigma=0.3), atol=0, rtol=0)
        assert not torch.allclose(pred, cfg(cond, uncond, 3.0))


def test_adg_sigma_per_item() -> None:
    x, cond, uncond = _adg_inputs(7)
    fn = get_guidance("adg")
    both = fn(cond, uncond, 4.0, {}, latents=x, sigma=torch.tensor([0.3, 0.8], dtype=torch.float64))
    for i, s in enumerate((0.3, 0.8)):
        one = fn(cond[i : i + 1], uncond[i : i + 1], 4.0, {}, latents=x[i : i + 1], sigma=s)
        torch.testing.assert_close(both[i : i + 1], one, atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        fn(cond, uncond, 4.0, {}, latents=x, sigma=torch.tensor([0.1, 0.2, 0.3]))


# ----------------------------------------------------------------------------------------------
# registry


def test_registry_names_and_alias() -> None:
    assert set(GUIDANCE) == {"apg", "cfg", "adg", "adg_w_norm", "adg_wo_clip"}
    assert get_guidance("apg_classic") is apg
    assert get_guidance("apg") is apg
    assert get_guidance("cfg") is cfg


@pytest.mark.parametrize("name", ["", "APG", "cfg++", "adg_norm", "classic", "none"])
def test_unknown_guidance_raises(name: str) -> None:
    with pytest.raises(ValueError, match="unknown guidance"):
        get_guidance(name)

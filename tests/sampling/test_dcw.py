"""DCW: the Haar closed form on frame pairs, odd lengths, identity cases, the
transform round trip, and the per-mode lambdas."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from songstep.sampling.dcw import DCWOptions, apply_dcw, haar_dwt, haar_idwt


def _xy(seed: int, t: int, b: int = 2, c: int = 8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, c, generator=g).to(dtype), torch.randn(b, t, c, generator=g).to(dtype)


def _closed_form(x: torch.Tensor, y: torch.Tensor, lam_low: float, lam_high: float) -> torch.Tensor:
    """x'[2k] = x[2k] + a·d[2k] + b·d[2k+1]; x'[2k+1] = x[2k+1] + b·d[2k] + a·d[2k+1]; an odd last
    frame gets x + a·d (its partner is the zero pad). Float64."""
    x, y = x.double(), y.double()
    d = x - y
    a, b = (lam_low + lam_high) / 2, (lam_low - lam_high) / 2
    out = x.clone()
    t = x.shape[1]
    for k in range(0, t - 1, 2):
        out[:, k] = x[:, k] + a * d[:, k] + b * d[:, k + 1]
        out[:, k + 1] = x[:, k + 1] + b * d[:, k] + a * d[:, k + 1]
    if t % 2:
        out[:, t - 1] = x[:, t - 1] + a * d[:, t - 1]
    return out


lengths = st.integers(min_value=1, max_value=17)
unit = st.floats(min_value=0.0, max_value=1.0)
scalers = st.floats(min_value=-1.0, max_value=1.0)


@settings(max_examples=150, deadline=None)
@given(t_len=lengths, t=unit, scaler=scalers, high=scalers, seed=st.integers(0, 10_000))
def test_double_mode_matches_closed_form(t_len: int, t: float, scaler: float, high: float, seed: int) -> None:
    x, y = _xy(seed, t_len)
    opts = DCWOptions(scaler=scaler, high_scaler=high)
    out = apply_dcw(x, y, t, opts)
    assert out.shape == x.shape and out.dtype == x.dtype
    expected = _closed_form(x, y, t * scaler, (1 - t) * high)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("t_len", [2, 3, 8, 25, 26])
@pytest.mark.parametrize("mode", ["low", "high"])
def test_single_band_modes_match_closed_form(mode: str, t_len: int) -> None:
    x, y = _xy(t_len, t_len)
    t = 0.3
    opts = DCWOptions(mode=mode, scaler=0.4, high_scaler=123.0)  # high_scaler unused outside "double"
    lam_low, lam_high = (t * 0.4, 0.0) if mode == "low" else (0.0, (1 - t) * 0.4)
    torch.testing.assert_close(apply_dcw(x, y, t, opts).double(), _closed_form(x, y, lam_low, lam_high), atol=1e-6, rtol=1e-6)


def test_defaults() -> None:
    opts = DCWOptions()
    assert (opts.enabled, opts.mode, opts.scaler, opts.high_scaler, opts.wavelet) == (True, "double", 0.05, 0.02, "haar")
    assert opts.active


@pytest.mark.parametrize("t", [0.0, 0.25, 0.8, 1.0])
def test_mode_lambdas(t: float) -> None:
    assert DCWOptions(mode="double", scaler=0.5, high_scaler=0.2).lambdas(t) == (t * 0.5, (1 - t) * 0.2)
    assert DCWOptions(mode="low", scaler=0.5, high_scaler=0.2).lambdas(t) == (t * 0.5, 0.0)
    assert DCWOptions(mode="high", scaler=0.5, high_scaler=0.2).lambdas(t) == (0.0, (1 - t) * 0.5)


def test_low_mode_keeps_high_band_and_high_mode_keeps_low_band() -> None:
    x, y = _xy(1, 12)
    xl, xh = haar_dwt(x)
    low = apply_dcw(x, y, 0.6, DCWOptions(mode="low", scaler=0.3))
    high = apply_dcw(x, y, 0.6, DCWOptions(mode="high", scaler=0.3))
    torch.testing.assert_close(haar_dwt(low)[1], xh, atol=1e-6, rtol=0)
    torch.testing.assert_close(haar_dwt(high)[0], xl, atol=1e-6, rtol=0)
    yl, yh = haar_dwt(y)
    torch.testing.assert_close(haar_dwt(low)[0], xl + 0.6 * 0.3 * (xl - yl), atol=1e-6, rtol=0)
    torch.testing.assert_close(haar_dwt(high)[1], xh + 0.4 * 0.3 * (xh - yh), atol=1e-6, rtol=0)


def test_pix_mode_uses_no_wavelets_at_t_one() -> None:
    x, y = _xy(2, 9)
    out = apply_dcw(x, y, 1.0, DCWOptions(mode="pix", scaler=0.3))
    torch.testing.assert_close(out, x + 0.3 * (x - y), atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", [0.0, 0.5])
def test_pix_mode_uses_the_raw_scaler(t: float) -> None:
    x, y = _xy(3, 9)
    out = apply_dcw(x, y, t, DCWOptions(mode="pix", scaler=0.3))
    torch.testing.assert_close(out, x + 0.3 * (x - y), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "opts",
    [
        DCWOptions(enabled=False),
        DCWOptions(enabled=False, mode="pix", scaler=1.0),
        DCWOptions(scaler=0.0, high_scaler=0.0),
        DCWOptions(mode="low", scaler=0.0, high_scaler=0.5),
        DCWOptions(mode="high", scaler=0.0, high_scaler=0.5),
        DCWOptions(mode="pix", scaler=0.0, high_scaler=0.5),
    ],
)
def test_inactive_options_are_identity(opts: DCWOptions) -> None:
    x, y = _xy(4, 7)
    assert not opts.active
    assert apply_dcw(x, y, 0.5, opts) is x


def test_zero_effective_lambdas_are_identity_to_rounding() -> None:
    x, y = _xy(5, 11)
    # double at t = 1: λ_high = 0 and at t = 0: λ_low = 0 — only the other band acts
    opts = DCWOptions(scaler=0.0, high_scaler=0.3)
    torch.testing.assert_close(apply_dcw(x, y, 1.0, opts), x, atol=1e-6, rtol=0)
    opts = DCWOptions(scaler=0.3, high_scaler=0.0)
    torch.testing.assert_close(apply_dcw(x, y, 0.0, opts), x, atol=1e-6, rtol=0)
    # y == x: nothing to push away from
    torch.testing.assert_close(apply_dcw(x, x.clone(), 0.7, DCWOptions(scaler=0.9, high_scaler=0.9)), x, atol=1e-6, rtol=0)


def test_bf16_is_computed_in_fp32_and_cast_back() -> None:
    x, y = _xy(6, 10, dtype=torch.bfloat16)
    out = apply_dcw(x, y, 0.4, DCWOptions())
    assert out.dtype == torch.bfloat16
    expected = _closed_form(x.float(), y.float(), 0.4 * 0.05, 0.6 * 0.02).float().to(torch.bfloat16)
    torch.testing.assert_close(out, expected, atol=1e-2, rtol=0)
    # a single rounding of the fp32 result: most entries equal exactly
    assert (out == expected).float().mean() > 0.95


@settings(max_examples=60, deadline=None)
@given(t_len=st.integers(1, 16).map(lambda n: 2 * n), seed=st.integers(0, 10_000))
def test_haar_round_trip(t_len: int, seed: int) -> None:
    x, _ = _xy(seed, t_len)
    low, high = haar_dwt(x)
    assert low.shape == high.shape == (2, t_len // 2, 8)
    torch.testing.assert_close(haar_idwt(low, high), x, atol=1e-6, rtol=1e-6)
    xd = x.double()
    torch.testing.assert_close(haar_idwt(*haar_dwt(xd)), xd, atol=1e-14, rtol=0)
    # orthonormal: energy preserved
    torch.testing.assert_close((low.double() ** 2).sum() + (high.double() ** 2).sum(), (xd**2).sum(), rtol=1e-6, atol=0)


def test_haar_coefficients() -> None:
    x = torch.tensor([[[1.0], [3.0], [2.0], [-2.0]]])
    low, high = haar_dwt(x)
    s = 2**-0.5
    torch.testing.assert_close(low.flatten(), torch.tensor([4 * s, 0.0]))
    torch.testing.assert_close(high.flatten(), torch.tensor([-2 * s, 4 * s]))


def test_options_validation() -> None:
    with pytest.raises(ValueError):
        DCWOptions(mode="triple")
    with pytest.raises(ValueError):
        DCWOptions(wavelet="db4")

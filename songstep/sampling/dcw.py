"""DCW: differential correction in the wavelet domain.

After each sampler update, the new latent x is pushed away from the step's clean estimate
y = x_before − v·t, band by band, with a single-level Haar DWT along time (zero-padded to an even
length and trimmed back), computed in fp32:
    low' = low(x) + λ_low·(low(x) − low(y)),  high' = high(x) + λ_high·(high(x) − high(y)).
Modes: "double" (λ_low = t·scaler, λ_high = (1 − t)·high_scaler), "low" (t·scaler on low only),
"high" ((1 − t)·scaler on high only), "pix" (x + scaler·(x − y), no wavelets, no t factor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MODES = ("double", "low", "high", "pix")
_C = 1.0 / math.sqrt(2.0)


@dataclass(frozen=True)
class DCWOptions:
    enabled: bool = True
    mode: str = "double"
    scaler: float = 0.05
    high_scaler: float = 0.02
    wavelet: str = "haar"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown DCW mode {self.mode!r}; choose from: {', '.join(MODES)}")
        if self.wavelet != "haar":
            raise ValueError(f"DCW wavelet {self.wavelet!r} is not supported; only 'haar'")

    @property
    def active(self) -> bool:
        if not self.enabled:
            return False
        if self.mode == "double":
            return self.scaler != 0.0 or self.high_scaler != 0.0
        return self.scaler != 0.0

    def lambdas(self, t: float) -> tuple[float, float]:
        if self.mode == "double":
            return t * self.scaler, (1.0 - t) * self.high_scaler
        if self.mode == "low":
            return t * self.scaler, 0.0
        if self.mode == "high":
            return 0.0, (1.0 - t) * self.scaler
        return self.scaler, 0.0  # pix: the raw scaler


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, C] (T even) → low, high [B, T/2, C]."""
    even, odd = x[:, 0::2], x[:, 1::2]
    return (even + odd) * _C, (even - odd) * _C


def haar_idwt(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    out = torch.empty(low.shape[0], low.shape[1] * 2, low.shape[2], dtype=low.dtype, device=low.device)
    out[:, 0::2] = (low + high) * _C
    out[:, 1::2] = (low - high) * _C
    return out


def apply_dcw(x: torch.Tensor, y: torch.Tensor, t: float, options: DCWOptions) -> torch.Tensor:
    """Corrected x (same dtype as x)."""
    if not options.active:
        return x
    lam_low, lam_high = options.lambdas(float(t))
    xf, yf = x.float(), y.float()
    if options.mode == "pix":
        return (xf + lam_low * (xf - yf)).to(x.dtype)
    length = xf.shape[1]
    if length % 2:
        xf = torch.nn.functional.pad(xf, (0, 0, 0, 1))
        yf = torch.nn.functional.pad(yf, (0, 0, 0, 1))
    xl, xh = haar_dwt(xf)
    yl, yh = haar_dwt(yf)
    xl = xl + lam_low * (xl - yl)
    xh = xh + lam_high * (xh - yh)
    return haar_idwt(xl, xh)[:, :length].to(x.dtype)

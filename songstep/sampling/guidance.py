"""Classifier-free guidance functions for the base/SFT/XL samplers.

Every function has the signature `fn(cond, uncond, scale, state, *, latents, sigma, corrector)`
and returns the guided velocity. `state` is one dict per generation (APG keeps its momentum there).
`corrector=True` marks a Heun corrector call: APG then falls back to plain CFG (so its momentum
advances once per step), and ADG falls back to CFG when σ = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
ADG_ANGLE_CLIP = 3.14 / 6  # upstream's literal 3.14, not π

GuidanceFn = Callable[..., torch.Tensor]


def cfg(cond, uncond, scale, state=None, **_) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def apg_update(diff: torch.Tensor, cond: torch.Tensor, scale: float, eta: float = 0.0,
               norm_threshold: float = APG_NORM_THRESHOLD, dims=(1,)) -> torch.Tensor:
    """Norm-clamp `diff` along `dims`, keep its part orthogonal to `cond` (projection in float64),
    and return cond + (scale − 1)·(orth + eta·par)."""
    dims = list(dims)
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), norm_threshold / norm)
    unit = F.normalize(cond.double(), dim=dims)
    d64 = diff.double()
    par = (d64 * unit).sum(dim=dims, keepdim=True) * unit
    orth = (d64 - par).to(diff.dtype)
    update = orth + eta * par.to(diff.dtype)
    return cond + (scale - 1) * update


def apg(cond, uncond, scale, state, *, corrector: bool = False, momentum: float = APG_MOMENTUM,
        eta: float = 0.0, norm_threshold: float = APG_NORM_THRESHOLD, dims=(1,), **_) -> torch.Tensor:
    """Adaptive projected guidance with a momentum buffer that lives in `state` for the whole
    generation and only advances on steps where guidance applies (norms along time, dims=[1])."""
    if corrector:
        return cfg(cond, uncond, scale)
    diff = cond - uncond
    running = state.get("momentum", 0)
    running = diff + momentum * running
    state["momentum"] = running
    return apg_update(running, cond, scale, eta, norm_threshold, dims)


def _adg(cond, uncond, scale, latents, sigma, angle_clip, apply_norm, apply_clip) -> torch.Tensor:
    n, t, c = cond.shape
    sig = torch.as_tensor(sigma, device=latents.device, dtype=latents.dtype).reshape(-1, 1, 1)
    if sig.shape[0] not in (1, n):
        raise ValueError(f"sigma must be a scalar or one per item, got {tuple(sig.shape)}")
    weight = scale - 1
    weight = weight * (weight > 0) + 1e-3
    hat_c = latents - sig * cond
    hat_u = latents - sig * uncond
    diff = hat_c - hat_u
    a = hat_c.reshape(-1, c).double()
    b = hat_u.reshape(-1, c).double()
    cos = ((a / a.norm(dim=1, keepdim=True)) * (b / b.norm(dim=1, keepdim=True))).sum(dim=1, keepdim=True)
    theta = torch.acos(cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6)).view(n, t, 1)
    theta_new = torch.clip(weight * theta, -angle_clip, angle_clip) if apply_clip else weight * theta
    df, uf = diff.reshape(-1, c).float(), hat_u.reshape(-1, c).float()
    proj = (df * uf).sum(1, keepdim=True) / ((uf * uf).sum(1, keepdim=True) + 1e-8) * uf
    perp = (df - proj).reshape(n, t, c)
    sin = torch.sin(theta)
    new = torch.cos(theta_new) * hat_c + perp * torch.sin(theta_new) / sin * (sin > 1e-3) + perp * weight * (sin <= 1e-3)
    if apply_norm:
        new = new * torch.linalg.norm(hat_c, dim=1, keepdim=True) / torch.linalg.norm(new, dim=1, keepdim=True)
    return ((latents - new) / sig).reshape(n, t, c).to(latents.dtype)


def _adg_variant(angle_clip: float, apply_norm: bool, apply_clip: bool) -> GuidanceFn:
    def fn(cond, uncond, scale, state=None, *, latents, sigma, corrector: bool = False, **_) -> torch.Tensor:
        if corrector and float(sigma) == 0.0:
            return cfg(cond, uncond, scale)
        return _adg(cond, uncond, scale, latents, sigma, angle_clip, apply_norm, apply_clip)

    return fn


GUIDANCE: dict[str, GuidanceFn] = {
    "apg": apg,
    "cfg": cfg,
    "adg": _adg_variant(ADG_ANGLE_CLIP, False, True),
    "adg_w_norm": _adg_variant(3.14 / 3, True, True),
    "adg_wo_clip": _adg_variant(ADG_ANGLE_CLIP, False, False),
}
ALIASES = {"apg_classic": "apg"}


def get_guidance(name: str) -> GuidanceFn:
    key = ALIASES.get(name, name)
    if key not in GUIDANCE:
        raise ValueError(f"unknown guidance {name!r}; choose from: {', '.join(GUIDANCE)}")
    return GUIDANCE[key]

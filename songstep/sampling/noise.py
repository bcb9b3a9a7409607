"""Initial noise from caller-passed generators.

Upstream's seed rules, as generators: one generator → one draw of the full [B, T, C] shape; a list
→ one generator per item, one [1, T, C] draw each (None entries draw unseeded); None → unseeded.
Retake mixes a second draw: cos(vπ/2)·noise + sin(vπ/2)·retake_noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator | None] | None


def generators_from_seed(seed: int | Sequence[int | None] | None, device: torch.device | str = "cpu") -> Generators:
    """Upstream's `seed` argument as generators: int → one; list → one per item (None or a
    negative entry → unseeded); None → unseeded."""
    if seed is None:
        return None
    if isinstance(seed, int):
        return torch.Generator(device=device).manual_seed(int(seed))
    return [
        None if s is None or int(s) < 0 else torch.Generator(device=device).manual_seed(int(s))
        for s in seed
    ]


def draw_noise(
    shape: Sequence[int], generators: Generators, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Draw noise of `shape` ([B, ...]) following the generator rules above."""
    shape = tuple(shape)
    if generators is None or isinstance(generators, torch.Generator):
        return torch.randn(shape, generator=generators, device=device, dtype=dtype)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    rows = [torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generators]
    return torch.cat(rows, dim=0)


def mix_retake(noise: torch.Tensor, retake_noise: torch.Tensor, variance: float) -> torch.Tensor:
    """Variance-preserving blend: v = 0 keeps `noise`, v = 1 gives `retake_noise`."""
    if variance <= 0.0:
        return noise
    angle = variance * (math.pi / 2.0)
    return math.cos(angle) * noise + math.sin(angle) * retake_noise


class NoiseStream:
    """Fresh noise draws during sampling (SDE re-noising, flow-edit forward noise), taken from
    caller-passed generators so a run is reproducible. `record` keeps every draw (tests)."""

    def __init__(self, generators: Generators, record: bool = False) -> None:
        self.generators = generators
        self.draws: list[torch.Tensor] | None = [] if record else None

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        out = draw_noise(like.shape, self.generators, device=like.device, dtype=like.dtype)
        if self.draws is not None:
            self.draws.append(out)
        return out

"""Post-processing of decoded takes: the level rule of each task and the repaint splice.

Level: new songs and covers are peak-normalised to −1 dBFS by default; tasks whose result sits
against the source it came from (repaint, add-layer, extract, complete: `TaskSpec.keeps_level`)
keep the decoded level, so a stem or a layer still matches the mix. `normalize=True/False`
overrides the rule; a loudness target in LUFS (ITU-R BS.1770, `pyloudnorm`) wins over both, with
peaks limited to 0 dBFS. Every take is first soft-limited against clipping (`audio.anti_clip`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from songstep import audio
from songstep.constants import HOP_LENGTH, SAMPLE_RATE


@dataclass(frozen=True)
class Level:
    """The output level rule of one run."""

    normalize: bool | None = None
    loudness: float | None = None
    keep: bool = False  # the task keeps the source's level

    @property
    def peak(self) -> bool:
        return self.normalize if self.normalize is not None else not self.keep

    def apply(self, wave: torch.Tensor) -> torch.Tensor:
        wave = torch.stack([audio.anti_clip(w) for w in wave])
        if self.loudness is not None:
            return audio.loudness_normalize(wave, self.loudness)
        return torch.stack([audio.peak_normalize(w) for w in wave]) if self.peak else wave

    def params(self) -> dict:
        if self.loudness is not None:
            return {"level": f"{self.loudness:g} LUFS"}
        return {"level": "-1 dBFS peak" if self.peak else "as decoded"}


def splice(generated: torch.Tensor, source: torch.Tensor, window: tuple[int, int], crossfade_s: float) -> torch.Tensor:
    """Keep the source outside the window (frames → samples), with linear ramps of
    `crossfade_s` seconds outside each window edge."""
    n = generated.shape[-1]
    m = torch.zeros(n)
    a, b = window[0] * HOP_LENGTH, min(window[1] * HOP_LENGTH, n)
    m[a:b] = 1.0
    ramp = int(round(crossfade_s * SAMPLE_RATE))
    if ramp > 0:
        lo = max(0, a - ramp)
        m[lo:a] = torch.linspace(0, 1, a - lo + 2)[1:-1]
        hi = min(n, b + ramp)
        m[b:hi] = torch.linspace(1, 0, hi - b + 2)[1:-1]
    src = audio.pad_or_trim(source, n).to(generated)
    return m.to(generated) * generated + (1 - m.to(generated)) * src

"""What the UI shows of a finished take: its spectrogram image and its metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from songstep import audio
from songstep.constants import SAMPLE_RATE

N_FFT, HOP = 2048, 512
MAX_COLUMNS = 1024  # image width cap (long songs are pooled in time)
HEIGHT = 256


def spectrogram(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A log-magnitude spectrogram of `wave` ([channels, samples]) as an RGB uint8 image
    [HEIGHT, width, 3], low frequencies at the bottom, -80…0 dB mapped through a dark-to-bright
    colour ramp."""
    mono = wave.float().mean(0) if wave.dim() == 2 else wave.float()
    if mono.numel() < N_FFT:
        mono = torch.nn.functional.pad(mono, (0, N_FFT - mono.numel()))
    spec = torch.stft(mono, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-8))
    db = (db - db.max()).clamp(-80.0, 0.0)  # [freq, time]
    if db.shape[1] > MAX_COLUMNS:
        db = torch.nn.functional.adaptive_avg_pool1d(db[None], MAX_COLUMNS)[0]
    db = torch.nn.functional.interpolate(db[None, None], size=(HEIGHT, db.shape[1]), mode="bilinear",
                                         align_corners=False)[0, 0]
    level = ((db + 80.0) / 80.0).flip(0).numpy()  # 0 (silent) … 1 (loudest), high frequencies on top
    return (_ramp(level) * 255).round().astype(np.uint8)


def _ramp(x: np.ndarray) -> np.ndarray:
    """Black → purple → orange → pale yellow, like common spectrogram maps."""
    stops = np.array([[0.0, 0.0, 0.02], [0.35, 0.05, 0.45], [0.85, 0.3, 0.2], [0.99, 0.75, 0.2], [1.0, 1.0, 0.75]])
    pos = np.clip(x, 0.0, 1.0) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return stops[lo] * (1 - frac) + stops[lo + 1] * frac


def spectrogram_file(path: str | Path) -> np.ndarray:
    wave = audio.load_audio(path)
    return spectrogram(wave)


def take_metadata(job: Any, index: int, fields: dict[str, Any]) -> dict[str, Any]:
    """One take's metadata: its seed and file, the job, the request as submitted and the
    planned/effective musical metadata the worker recorded."""
    result = job.result or {}
    items = result.get("items") or [{}]
    return {
        "seed": result.get("seeds", [None])[index],
        "file": result.get("files", [None])[index],
        "job_id": job.id,
        "model": result.get("dit_model"),
        "request": {k: v for k, v in fields.items() if k not in ("source_audio", "reference_audio")},
        "metas": items[index] if index < len(items) else {},
        "duration": result.get("duration"),
        "timings": result.get("timings"),
    }

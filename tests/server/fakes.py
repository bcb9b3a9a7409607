"""A fast stand-in pipeline for server tests that exercise the HTTP layer, the queue and the
store rather than the model (schemathesis, load test, crash test): it has the `Pipeline` surface
the server uses (`run`, `components.variant/folders/dit.config`, `planner`) and makes a short
sine wave per take after `delay` seconds split over `steps` progress steps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from songstep.config import tiny_config
from songstep.pipeline.inputs import resolve_seeds


@dataclass
class FakeResult:
    audio: torch.Tensor
    sample_rate: int
    seeds: list[int]
    params: dict
    timings: dict = field(default_factory=dict)


class FakePipeline:
    def __init__(self, delay: float = 0.0, steps: int = 4, name: str = "acestep-v15-turbo", log: Path | None = None):
        self.delay, self.steps, self.log = delay, steps, log
        config = tiny_config(is_turbo=True)
        self.components = SimpleNamespace(variant="turbo", folders={"dit": Path("/nonexistent") / name},
                                          dit=SimpleNamespace(config=config))
        self.planner = None
        self.requests = []

    def run(self, request, *, progress=None, **kwargs):
        self.requests.append(request)
        for i in range(self.steps):
            if progress is not None:
                progress("dit", i, self.steps)
            time.sleep(self.delay / self.steps)
        if progress is not None:
            progress("dit", self.steps, self.steps)
        seeds = resolve_seeds(request.seed, request.batch)
        sr, n = 48000, 4800
        t = torch.arange(n) / sr
        wave = torch.stack([0.5 * torch.sin(2 * math.pi * (220 + s % 100) * t) for s in seeds])
        audio = wave[:, None, :].repeat(1, 2, 1)
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{request.caption}\n")
        params = {"caption": request.caption, "lyrics": request.lyrics, "bpm": request.bpm, "seconds": 0.1,
                  "keyscale": request.keyscale, "timesignature": request.timesignature, "model": "turbo"}
        return FakeResult(audio, sr, seeds, params, {"dit": self.delay, "total": self.delay})

"""The stages of `python -m benchmarks`: each returns result rows (dicts with stage, impl,
duration_s, batch, ms, peak_mb, floor_ms and stage-specific extras).

Models: full size builds the official shapes with random weights in memory (`pipeline.full_components`:
2B turbo DiT, Oobleck VAE, Qwen3-Embedding-0.6B-shaped text encoder; the planner benchmark's
Qwen3-1.7B-shaped LM), bf16 where the device has it; `--tiny` uses the tiny random checkpoint tree
on the CPU in fp32. diffusers' `AceStepTransformer1DModel` gets the very same DiT weights (through
songstep's diffusers key map), so its rows run the same network on the same inputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from benchmarks import pipeline as pipeline_bench
from benchmarks.floors import Peaks, count_flops, device_peaks
from songstep.errors import SongstepError
from songstep.models.precision import compute_dtype
from songstep.pipeline import Pipeline
from songstep.pipeline.tiers import detect_tier

log = logging.getLogger("benchmarks")
LATENT_HZ = 25
CODES_HZ = 5
CAPTION = "upbeat synth-pop, bright analog pads, punchy drums, catchy female vocal hook"
LYRICS = "[Verse]\n" + "la la la, singing all night long\n" * 40


@dataclass
class Setup:
    device: torch.device
    dtype: torch.dtype
    tiny: bool
    make_pipe: object  # () -> Pipeline, called when a stage first needs the models
    peaks: Peaks
    repeats: int = 2
    steps: int = 8
    enc_tokens: int = 2305
    compile_backend: str | None = None
    compile_mode: str | None = None
    focus_shapes: set = field(default_factory=set)  # {(duration_s, batch)} of compiled/int8 rows; empty: all
    quantize: bool = True
    _pipe: Pipeline | None = None
    _diffusers: object = None
    _runner: object = None
    _int8: object = None
    _flops: dict = field(default_factory=dict)

    def focus(self, duration: float, batch: int) -> bool:
        return not self.focus_shapes or (float(duration), int(batch)) in self.focus_shapes

    @property
    def pipe(self) -> Pipeline:
        if self._pipe is None:
            self._pipe = self.make_pipe()
        return self._pipe

    @property
    def dit(self):
        return self.pipe.components.dit


def build(tiny: bool, device: str | None) -> Setup:
    if tiny:
        dev = torch.device(device or "cpu")
        dtype = torch.float32

        def make_pipe():
            return pipeline_bench.tiny_pipeline(str(dev))
    else:
        dev = torch.device(device or "cuda")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("full size needs CUDA; use --tiny on CPU")
        dtype = compute_dtype(dev)

        def make_pipe():
            return Pipeline(pipeline_bench.full_components(dev, dtype, "turbo"), detect_tier(dev))
    setup = Setup(dev, dtype, tiny, make_pipe, device_peaks(dev, dtype), enc_tokens=64 if tiny else 2305)
    log.info("device %s (%s), peaks %.3g FLOP/s %.3g B/s (%s)", setup.peaks.name, dtype, setup.peaks.flops,
             setup.peaks.bandwidth, setup.peaks.source)
    return setup


# -- measuring -------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(setup: Setup, fn, repeats: int | None = None) -> tuple[float, float | None]:
    """(ms per call, peak MiB allocated on the device during the timed calls; None on CPU),
    after one warm-up call (kernel selection, compiles)."""
    device = setup.device
    with torch.no_grad():
        fn()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        n = repeats or setup.repeats
        for _ in range(n):
            fn()
        sync(device)
    ms = (time.perf_counter() - start) / n * 1e3
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return ms, peak


def row(stage: str, impl: str, duration, batch, ms, peak, floor, **extra) -> dict:
    return {
        "stage": stage, "impl": impl, "duration_s": duration, "batch": batch,
        "ms": None if ms is None else round(ms, 3), "peak_mb": None if peak is None else round(peak, 1),
        "floor_ms": None if floor is None else round(floor, 4),
        "floor_ratio": None if not ms or floor is None else round(floor / ms, 4), **extra,
    }


def guarded(stage: str, impl: str, duration, batch, fn) -> list[dict]:
    """Run one measurement; an out-of-memory becomes a row saying so instead of ending the run."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        log.warning("%s %s %s s batch %s: out of memory", stage, impl, duration, batch)
        return [row(stage, impl, duration, batch, None, None, None, error=f"OOM: {str(e)[:120]}")]
    except SongstepError as e:  # an optional dependency missing (torchao)
        log.warning("%s %s: %s", stage, impl, e)
        return [row(stage, impl, duration, batch, None, None, None, error=str(e))]
    except Exception as e:  # a one-shot GPU run keeps going; the row says what failed
        log.exception("%s %s %s s batch %s failed", stage, impl, duration, batch)
        return [row(stage, impl, duration, batch, None, None, None, error=f"{type(e).__name__}: {str(e)[:300]}")]


def flops_once(setup: Setup, key: tuple, fn) -> int:
    if key not in setup._flops:
        setup._flops[key] = count_flops(fn)
    return setup._flops[key]

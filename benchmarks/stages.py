"""Text encoder, planner LM, VAE decode and end-to-end rows (the DiT's are in `stage_dit`)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from benchmarks import planner as planner_bench
from benchmarks.floors import weight_bytes
from benchmarks.suite import CAPTION, CODES_HZ, LATENT_HZ, LYRICS, Setup, flops_once, guarded, measure, row

log = logging.getLogger("benchmarks")
TEXT_TOKENS = 256  # caption prompt length the text encoder runs over (upstream's template + caption)


def text_rows(setup: Setup, batches) -> list[dict]:
    """The caption through the text encoder's transformer plus the lyric embedding lookup; the
    song length does not enter (duration_s is null)."""
    text = setup.pipe.components.text
    words = " ".join([CAPTION] * 40)
    rows = []
    for batch in batches:
        def encode(b=batch):
            text.encode_captions([words] * b, max_length=TEXT_TOKENS)
            text.embed_lyrics([LYRICS] * b)

        def measured(b=batch, fn=encode):
            flops = flops_once(setup, ("text",), lambda: encode(1)) * b
            ms, peak = measure(setup, fn)
            floor = setup.peaks.floor_ms(flops, weight_bytes(text.model))
            return [row("text", "songstep", None, b, ms, peak, floor, tokens=TEXT_TOKENS)]

        rows += guarded("text", "songstep", None, batch, measured)
    return rows


def vae_rows(setup: Setup, durations, batches) -> list[dict]:
    """Decode of random latents: tiled (512-frame tiles, 64 overlap: the default) at every shape,
    and untiled at batch 1 up to 240 s (its activations grow with the whole song)."""
    vae = setup.pipe.components.vae
    rows = []
    for duration in durations:
        frames = int(duration * LATENT_HZ)
        for batch in batches:
            plans = [("songstep-tiled", None)]
            if batch == 1 and duration <= 240:
                plans.append(("songstep-untiled", frames + 1))
            for impl, chunk in plans:
                rows += guarded("vae", impl, duration, batch,
                                lambda d=duration, b=batch, i=impl, c=chunk: [_vae_row(setup, vae, d, b, i, c)])
    return rows


def _vae_row(setup: Setup, vae, duration, batch, impl, chunk) -> dict:
    frames = int(duration * LATENT_HZ)
    g = torch.Generator(device=setup.device).manual_seed(2)
    lat = torch.randn(batch, frames, vae.latent_channels, generator=g, device=setup.device, dtype=vae.dtype)
    flops = flops_once(setup, ("vae", duration, impl), lambda: vae.decode(lat[:1], chunk_frames=chunk)) * batch
    ms, peak = measure(setup, lambda: vae.decode(lat, chunk_frames=chunk), repeats=1)
    return row("vae", impl, duration, batch, ms, peak, setup.peaks.floor_ms(flops, weight_bytes(vae.model)))


def lm_rows(setup: Setup, duration: float) -> list[dict]:
    """The planner benchmark's CoT + code phase for one song (codes = 5 per second, CFG 2.0) at
    batch 1: tiny LM on `--tiny` (transformers runner), else Qwen3-1.7B-shaped random bf16 weights
    with the static-cache runner (compiled step, CUDA graph, code-row head)."""
    codes = int(duration * CODES_HZ)
    if setup.tiny:
        argv = ["--tiny", "--device", str(setup.device), "--codes", str(codes)]
    else:
        argv = ["--config", "1.7B", "--codes", str(codes), "--bandwidth", str(setup.peaks.bandwidth)]
    args = planner_bench._parse(argv)
    with tempfile.TemporaryDirectory() as tmp:
        lm = planner_bench._build(args, planner_bench.write_tiny_lm(Path(tmp) / "lm", **planner_bench.VLLM_TINY))
        restricted = lm.backend.restricted_head
        if setup.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(setup.device)
        m = planner_bench._measure(args, lm, restricted)
    peak = torch.cuda.max_memory_allocated(setup.device) / 2**20 if setup.device.type == "cuda" else None
    tokens = m["cot"]["tokens"] + m["codes"]["tokens"]
    floor = m["floor_ms_weights_kv"] * m["codes"]["tokens"] + m["floor_ms_weights"] * m["cot"]["tokens"]
    impl = "songstep-" + ("hf" if not lm.backend.static_cache else "static")
    return [row("lm", impl, duration, 1, m["total_s"] * 1e3, peak, floor, tokens=tokens,
                tokens_per_s=m["codes"]["tokens_per_s"], cot_tokens=m["cot"]["tokens"], codes=m["codes"]["tokens"],
                head="codes+eos" if restricted else "full")]


def e2e_rows(setup: Setup, durations, batches, floors: dict) -> list[dict]:
    """`Pipeline.generate` without the LM (text encoder, condition encoder, DiT turbo 8 steps, VAE
    decode); the floor is the sum of the stages' floors measured in this run at the same shape."""
    rows = []
    for duration in durations:
        for batch in batches:
            def run(d=duration, b=batch):
                result = {}

                def generate():
                    result["r"] = setup.pipe.generate(CAPTION, LYRICS, duration=d, seed=1, batch=b, steps=setup.steps)

                ms, peak = measure(setup, generate, repeats=1)
                timings = {k: round(v * 1e3, 2) for k, v in result["r"].timings.items()}
                return [row("e2e", "songstep", d, b, ms, peak, floors.get((d, b)), stage_ms=timings)]

            rows += guarded("e2e", "songstep", duration, batch, run)
    return rows


def stage_floors(rows: list[dict], steps: int) -> dict:
    """(duration, batch) → text + steps × DiT step + VAE (tiled) floors, where all were measured."""
    pick = {}
    for r in rows:
        if r["impl"] in ("songstep", "songstep-tiled") and r["floor_ms"] is not None:
            pick[(r["stage"], r["duration_s"], r["batch"])] = r["floor_ms"]
    out = {}
    for (stage, duration, batch), floor in pick.items():
        if stage != "dit":
            continue
        text, vae = pick.get(("text", None, batch)), pick.get(("vae", duration, batch))
        if text is not None and vae is not None:
            out[(duration, batch)] = text + steps * floor + vae
    return out


def with_lm_rows(rows: list[dict]) -> list[dict]:
    """The LM's time added to the batch-1 pipeline's at the same length (measured separately,
    summed: the planner runs before the pipeline, on the same device). peak_mb is the sum of both
    runs' peaks: an upper bound for an LM that stays resident while the pipeline runs."""
    out = []
    for lm in (r for r in rows if r["stage"] == "lm" and r["ms"]):
        for e2e in (r for r in rows if r["stage"] == "e2e" and r["batch"] == 1 and r["duration_s"] == lm["duration_s"]):
            if not e2e["ms"]:
                continue
            floor = None if e2e["floor_ms"] is None else e2e["floor_ms"] + lm["floor_ms"]
            peak = None if e2e["peak_mb"] is None or lm["peak_mb"] is None else e2e["peak_mb"] + lm["peak_mb"]
            out.append(row("e2e+lm", "songstep (LM + pipeline, summed)", lm["duration_s"], 1, e2e["ms"] + lm["ms"],
                           peak, floor))
    return out

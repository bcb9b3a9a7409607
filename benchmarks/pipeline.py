"""End-to-end timing and peak memory per stage (text encoder, DiT, VAE).

    python benchmarks/pipeline.py --tiny                       # CPU, tiny random checkpoint tree
    python benchmarks/pipeline.py --seconds 240 --batch 1 4    # CUDA, full-size random weights, bf16

Full size builds the official shapes with random weights in memory (2B turbo DiT, Oobleck VAE with
hop 1920, Qwen3-Embedding-0.6B-shaped text encoder; the tiny tokenizer stands in for the real one).
Prints one JSON line per batch size, then the VAE decode of the longest song tiled (512/64) and
untiled.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from songstep.pipeline import Pipeline  # noqa: E402
from songstep.pipeline.components import Components  # noqa: E402
from songstep.pipeline.tiers import detect_tier  # noqa: E402


def full_components(device, dtype, variant: str) -> Components:
    from diffusers import AutoencoderOobleck
    from dit_forward import random_model
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from songstep.config import preset
    from songstep.models.text import TextEncoder
    from songstep.models.vae import VAE
    from songstep.testing.tiny_components import write_tiny_text_encoder

    dit = random_model(preset(variant), device, dtype)
    vae_model = AutoencoderOobleck(
        encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10], channel_multiples=[1, 2, 4, 8, 16],
        decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=48000,
    ).to(device, dtype).eval()
    text_cfg = Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=128, vocab_size=151669, rope_theta=1e6)
    text_model = Qwen3Model(text_cfg).to(device, dtype).eval()
    tok_dir = write_tiny_text_encoder(Path(tempfile.mkdtemp()) / "tok", 0)
    text = TextEncoder(text_model, AutoTokenizer.from_pretrained(tok_dir))
    silence = torch.randn(15000, 64, device=device).to(dtype)
    return Components(dit, VAE(vae_model), text, silence, variant, {}, torch.device(device))


def tiny_pipeline(device: str = "cpu") -> Pipeline:
    from songstep.testing.tiny import write_tiny_tree

    root = write_tiny_tree(Path(tempfile.mkdtemp()) / "tiny", lm=False)
    return Pipeline.from_pretrained(root, device=device)


def peak_gib(device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--variant", default="turbo")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="DiT steps (default: the variant's)")
    ap.add_argument("--device", default="cuda", help="full size runs here (cuda; cpu only to smoke-test the script)")
    args = ap.parse_args()
    if args.tiny:
        pipe, device = tiny_pipeline(), torch.device("cpu")
        args.seconds = min(args.seconds, 20.0)
    else:
        device = torch.device(args.device)
        pipe = Pipeline(full_components(device, torch.bfloat16, args.variant), detect_tier(device))
    lyrics = "[Verse]\n" + "la la la, singing all night long\n" * 40
    for batch in args.batch:
        result = None
        for _ in range(args.repeats):  # the first run warms up kernels
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            result = pipe.generate("upbeat synth-pop, bright pads", lyrics, duration=args.seconds, seed=1, batch=batch,
                                   steps=args.steps)
        timings = {k: round(v * 1000, 1) for k, v in result.timings.items()}
        print(json.dumps({"seconds": args.seconds, "batch": batch, "ms": timings, "peak_gib": peak_gib(device),
                          "audio": list(result.audio.shape)}), flush=True)
    vae = pipe.components.vae
    frames = int(args.seconds * 25)
    lat = torch.randn(1, frames, 64, device=device, dtype=vae.dtype)
    for label, chunk in (("tiled_512_64", None), ("untiled", frames + 1)):
        for _ in range(2):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            vae.decode(lat, chunk_frames=chunk)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1000
        print(json.dumps({"vae_decode": label, "seconds": args.seconds, "ms": round(ms, 1), "peak_gib": peak_gib(device)}), flush=True)


if __name__ == "__main__":
    main()

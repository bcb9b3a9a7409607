"""LoRA training speed and peak memory on random weights and random data (no checkpoint needed).

    python benchmarks/train_lora.py                     # CPU, tiny DiT, seconds
    python benchmarks/train_lora.py --full --rank 64    # CUDA: the full-size 2B turbo, bf16 base, batch 1

Each configuration runs `--steps` optimiser steps of the real objective (`lora_train.flow_loss`:
condition encoder, decoder forward in bf16 autocast on CUDA, fp32 loss, backward, AdamW on the
adapter) and prints one JSON line: steps/s, peak memory, trainable parameters and, with --full,
whether the peak fits a 12 GB card (upstream's claim: about an hour for 8 songs on a 3090).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from songstep.config import preset, tiny_config
from songstep.training import lora_train as lt
from songstep.training.trainer import attach

try:
    from benchmarks.dit_forward import random_model, sync
except ImportError:  # run as a script from the benchmarks folder
    from dit_forward import random_model, sync

GIB = 2**30


def batch(cfg, frames: int, size: int, text_tokens: int, lyric_tokens: int, device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "target_latents": torch.randn(size, frames, 64, generator=g).to(device),
        "text_hidden_states": torch.randn(size, text_tokens, cfg.text_hidden_dim, generator=g).to(device),
        "text_attention_mask": torch.ones(size, text_tokens, dtype=torch.bool, device=device),
        "lyric_hidden_states": torch.randn(size, lyric_tokens, cfg.text_hidden_dim, generator=g).to(device),
        "lyric_attention_mask": torch.ones(size, lyric_tokens, dtype=torch.bool, device=device),
    }


def run(args, seconds: float, checkpointing: bool, device, dtype) -> dict:
    cfg = preset("turbo") if args.full else tiny_config()
    model = random_model(cfg, device, dtype)
    silence = torch.zeros(max(int(seconds * 25), cfg.timbre_fix_frame), 64, device=device)
    train_cfg = lt.TrainConfig(rank=args.rank, batch_size=args.batch,
                               gradient_checkpointing=checkpointing).resolved(True)
    params = attach(model, train_cfg)
    if checkpointing:
        lt.enable_checkpointing(model)
    optimizer = lt.make_optimizer(params, train_cfg)
    data = batch(cfg, int(seconds * 25), args.batch, args.text_tokens, args.lyric_tokens, device)

    def step(k: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = lt.flow_loss(model, silence, data, train_cfg, torch.Generator().manual_seed(k))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return float(loss.detach())

    step(0)  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [step(k + 1) for k in range(args.steps)]
    sync(device)
    elapsed = time.perf_counter() - t0
    out = {
        "model": "2B turbo (random)" if args.full else "tiny", "device": str(device), "base_dtype": str(dtype),
        "rank": args.rank, "batch": args.batch, "seconds": seconds, "frames": int(seconds * 25),
        "gradient_checkpointing": checkpointing, "trainable_params": sum(p.numel() for p in params),
        "steps_per_s": round(args.steps / elapsed, 3), "final_loss": round(losses[-1], 4),
    }
    if device.type == "cuda":
        peak, reserved = torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB
        # a 12 GB card has 12 GiB, of which the CUDA context and the display take about half a GiB
        out.update(peak_gib=round(peak, 2), reserved_gib=round(reserved, 2), fits_12gb=reserved < 11.5)
    else:
        import resource

        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the full-size 2B turbo (needs CUDA)")
    p.add_argument("--rank", type=int, default=None, help="default: 64 with --full, 8 otherwise")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", type=float, nargs="+", default=None, help="song lengths (default: 60 240 full, 10 tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 full, 10 tiny)")
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--lyric-tokens", type=int, default=512)
    p.add_argument("--checkpointing", choices=("off", "on", "both"), default=None, help="default: both with --full")
    args = p.parse_args()
    random.seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.full and device.type != "cuda":
        raise SystemExit("--full needs a CUDA device")
    args.rank = args.rank or (64 if args.full else 8)
    args.steps = args.steps or (5 if args.full else 10)
    seconds = args.seconds or ([60.0, 240.0] if args.full else [10.0])
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing or ("both" if args.full else "off")]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for s in seconds:
        for checkpointing in modes:
            try:
                print(json.dumps(run(args, s, checkpointing, device, dtype)), flush=True)
            except torch.OutOfMemoryError:
                print(json.dumps({"seconds": s, "gradient_checkpointing": checkpointing, "error": "out of memory"}), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

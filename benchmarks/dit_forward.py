"""DiT speed: one decoder forward and an 8-step turbo-sized loop of forwards on random weights.

    python benchmarks/dit_forward.py --tiny                 # CPU, tiny config, seconds
    python benchmarks/dit_forward.py --frames 6000 --batch 1 8 --attention sdpa flex   # CUDA, bf16

6000 latent frames = a 240 s song = 3000 decoder tokens. Prints one JSON object per
(batch, attention) with milliseconds and peak memory. The loop reuses each condition's
cross-attention keys/values as the sampler does.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from songstep.config import preset, tiny_config
from songstep.loading.checkpoint import build_meta
from songstep.models import attention
from songstep.testing.tiny import _init_spec


def random_model(cfg, device, dtype):
    model = build_meta(cfg).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            mean, std = _init_spec(name, p.shape)
            p.normal_(mean, std, generator=gen)
    model = model.to(dtype)
    model.reset_buffers()
    return model.eval().requires_grad_(False)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn()  # warm-up (and compilation)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats * 1000


def run(args, model, batch, backend, device, dtype):
    attention.set_backend(backend)
    cfg = model.config
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, args.frames, 64, generator=g, device=device, dtype=dtype)
    ctx = torch.randn(batch, args.frames, 128, generator=g, device=device, dtype=dtype)
    enc = torch.randn(batch, args.enc_tokens, cfg.enc_hidden, generator=g, device=device, dtype=dtype)
    decoder = torch.compile(model.decoder) if args.compile else model.decoder
    times = [1.0 - i / args.steps for i in range(args.steps)]

    def forward():
        with torch.no_grad():
            t = torch.full((batch,), 0.75, device=device, dtype=dtype)
            return decoder(x, t, t, enc, ctx)

    def loop():
        with torch.no_grad():
            kv = model.decoder.cross_kv(enc)
            xt = x
            for t_ in times:
                t = torch.full((batch,), t_, device=device, dtype=dtype)
                xt = xt - 0.1 * decoder(xt, t, t, context_latents=ctx, cross_kv=kv)
            return xt

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fwd_ms = timed(forward, device, args.repeats)
    loop_ms = timed(loop, device, args.repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "variant": args.variant, "batch": batch, "frames": args.frames, "decoder_tokens": (args.frames + 1) // 2,
        "encoder_tokens": args.enc_tokens, "attention": backend, "compile": args.compile, "dtype": str(dtype),
        "forward_ms": round(fwd_ms, 2), f"loop_{args.steps}_ms": round(loop_ms, 2),
        "ms_per_step": round(loop_ms / args.steps, 2), "peak_gib": None if peak is None else round(peak, 2),
    }


def compare_backends(args, model, device, dtype) -> dict:
    """Max |Δ| of one decoder forward between the chosen attention backends (same inputs)."""
    g = torch.Generator(device=device).manual_seed(2)
    x = torch.randn(1, args.frames, 64, generator=g, device=device, dtype=dtype)
    ctx = torch.randn(1, args.frames, 128, generator=g, device=device, dtype=dtype)
    enc = torch.randn(1, args.enc_tokens, model.config.enc_hidden, generator=g, device=device, dtype=dtype)
    t = torch.full((1,), 0.75, device=device, dtype=dtype)
    outs = {}
    for backend in args.attention:
        attention.set_backend(backend)
        with torch.no_grad():
            outs[backend] = model.decoder(x, t, t, enc, ctx).float()
    ref = outs[args.attention[0]]
    return {"compare": args.attention, "max_abs_diff": {k: float((v - ref).abs().max()) for k, v in outs.items()},
            "ref_abs_max": float(ref.abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny config on CPU in fp32")
    ap.add_argument("--variant", default="turbo")
    ap.add_argument("--frames", type=int, default=6000)
    ap.add_argument("--enc-tokens", type=int, default=2305)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attention", nargs="+", default=["sdpa"], choices=["sdpa", "flex", "auto"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cuda", help="full size runs here (cuda; cpu only to smoke-test the script)")
    args = ap.parse_args()
    if args.tiny:
        device, dtype, cfg = torch.device("cpu"), torch.float32, tiny_config()
        args.frames, args.enc_tokens = min(args.frames, 250), min(args.enc_tokens, 64)
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("full size needs CUDA; use --tiny on CPU")
        device, dtype, cfg = torch.device(args.device), torch.bfloat16, preset(args.variant)
    model = random_model(cfg, device, dtype)
    if len(args.attention) > 1:
        print(json.dumps(compare_backends(args, model, device, dtype)), flush=True)
    for batch in args.batch:
        for backend in args.attention:
            print(json.dumps(run(args, model, batch, backend, device, dtype)), flush=True)


if __name__ == "__main__":
    main()

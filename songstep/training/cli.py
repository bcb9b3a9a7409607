"""`songstep dataset build` and `songstep train lora` (registered by `songstep.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from songstep.training.config import TrainConfig

_D = TrainConfig()


def _model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoints directory or hub repo")
    p.add_argument("--variant", default="turbo", help="DiT variant (default: %(default)s)")
    p.add_argument("--device", default=None, help="cuda | cpu | cuda:1 … (default: cuda when available)")
    p.add_argument("--root", default="checkpoints", help="where hub downloads go (default: %(default)s)")
    p.add_argument("--offline", action="store_true", help="never touch the network")


def add_parsers(sub) -> None:
    d = sub.add_parser("dataset", help="build a LoRA training dataset").add_subparsers(dest="dataset_command", required=True)
    b = d.add_parser("build", help="audio folder → manifest.json + fp32 safetensors shards (resumable)")
    b.add_argument("audio_dir", type=Path, help="audio files, optional <stem>.txt lyrics, <stem>.json / metadata.csv labels")
    _model(b)
    b.add_argument("--output", type=Path, required=True, help="dataset folder")
    b.add_argument("--min-seconds", type=float, default=1.0, help="skip shorter songs (default: %(default)s)")
    b.add_argument("--label", action="store_true", help="fill missing labels with the planner LM's understand")
    b.add_argument("--lm", default="auto", help="planner LM for --label (default: %(default)s)")
    b.add_argument("--manifest-only", action="store_true", help="write manifest.json for review and stop")
    b.add_argument("--rescan", action="store_true", help="rebuild manifest.json from the folder (drops edits)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(handler=run_dataset_build)

    t = sub.add_parser("train", help="train an adapter").add_subparsers(dest="train_command", required=True)
    tr = t.add_parser("lora", help="LoRA / LoKr on the DiT decoder (flow matching); see README 'Training'")
    _model(tr)
    tr.add_argument("--dataset", type=Path, required=True)
    tr.add_argument("--output", type=Path, required=True, help="adapter folder (peft format)")
    tr.add_argument("--steps", type=int, default=_D.steps, help="optimiser steps (default: %(default)s)")
    tr.add_argument("--rank", type=int, default=_D.rank, help="default: %(default)s")
    tr.add_argument("--alpha", type=float, default=None, help="default: 2 × rank")
    tr.add_argument("--kind", choices=("lora", "lokr"), default=_D.kind)
    tr.add_argument("--lr", type=float, default=_D.lr, help="default: %(default)s")
    tr.add_argument("--batch-size", type=int, default=_D.batch_size)
    tr.add_argument("--grad-accum", type=int, default=_D.grad_accum)
    tr.add_argument("--timesteps", choices=("auto", "turbo", "logit-normal"), default=_D.timesteps)
    tr.add_argument("--max-seconds", type=float, default=None, help="random crop of longer songs")
    tr.add_argument("--save-every", type=int, default=_D.save_every, help="default: %(default)s")
    tr.add_argument("--seed", type=int, default=_D.seed)
    tr.add_argument("--gradient-checkpointing", action="store_true")
    tr.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default=_D.optimizer, help="adamw8bit needs bitsandbytes")
    tr.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events (needs tensorboard)")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(handler=run_train_lora)


def run_dataset_build(args: argparse.Namespace) -> int:
    import torch

    from songstep.pipeline import Pipeline
    from songstep.training.dataset import build

    pipe = Pipeline.from_pretrained(args.model, variant=args.variant, device=args.device, dtype=torch.float32,
                                    offload=True, root=args.root, offline=args.offline,
                                    lm=args.lm if args.label else "none")

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            print(f"\rpreprocessed {done}/{total}", end="", file=sys.stderr, flush=True)

    report = build(pipe, args.audio_dir, args.output, min_seconds=args.min_seconds, label=args.label,
                   rescan=args.rescan, manifest_only=args.manifest_only, progress=progress)
    if not args.quiet:
        print(file=sys.stderr)
    for s in report.skipped:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    print(args.output / "manifest.json")
    return 0


def run_train_lora(args: argparse.Namespace) -> int:
    from songstep.training.trainer import train

    cfg = TrainConfig(
        steps=args.steps, rank=args.rank, alpha=args.alpha,
        kind=args.kind, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum, timesteps=args.timesteps,
        max_frames=int(args.max_seconds * 25) if args.max_seconds else None, save_every=args.save_every,
        seed=args.seed, gradient_checkpointing=args.gradient_checkpointing, optimizer=args.optimizer,
        tensorboard=args.tensorboard,
    )

    def progress(step: int, total: int, loss: float, eta: float) -> None:
        if not args.quiet:
            print(f"\rstep {step}/{total} loss {loss:.4f} eta {eta:.0f}s", end="", file=sys.stderr, flush=True)

    result = train(args.model, args.dataset, args.output, cfg, variant=args.variant, device=args.device,
                   resume=args.resume, progress=progress, root=args.root, offline=args.offline)
    if not args.quiet:
        print(file=sys.stderr)
    print(result.output)
    return 0

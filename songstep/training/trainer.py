"""The LoRA training run: load the DiT, attach a fresh adapter, step, log, checkpoint, resume.

Output folder: `adapter_config.json` + `adapter_model.safetensors` (the final adapter, a peft
folder that `--lora` and upstream load), `train_config.json`, `train_log.csv` (step, loss, lr,
grad norm, seconds, ETA), `checkpoints/step-NNNNNN/` (adapter + optimizer state) and, with
`tensorboard=True` (needs the `tensorboard` package), TensorBoard event files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from songstep import lora
from songstep.devices import resolve_device
from songstep.errors import InvalidRequest
from songstep.training import lora_train as lt
from songstep.training.dataset import load_dataset

log = logging.getLogger(__name__)

Progress = Callable[[int, int, float, float], None]  # (step, total, loss, eta seconds)


@dataclass
class TrainResult:
    output: Path
    steps: int
    losses: list[float]
    start_step: int
    seconds: float


def load_model(model, variant: str, device, root="checkpoints", offline=False):
    """The DiT (fp32 on CPU, bf16 on CUDA: frozen base) and its silence latent."""
    from songstep.loading.checkpoint import load_dit
    from songstep.models.vae import load_silence_latent
    from songstep.pipeline.components import SILENCE_FILE, resolve_folder

    folder = resolve_folder(model, variant, root, offline)
    dit = load_dit(folder, device=device)
    silence = load_silence_latent(folder / SILENCE_FILE)[0].to(device=device, dtype=torch.float32)
    return dit, silence


def attach(dit, cfg: lt.TrainConfig) -> list[torch.nn.Parameter]:
    """A fresh trainable adapter (fp32 parameters, whatever the base dtype)."""
    lora.add_adapter(dit, lt.peft_config(cfg), lt.ADAPTER, trainable=True)
    params = list(lora.adapter_parameters(dit, lt.ADAPTER).values())
    for p in params:
        p.data = p.data.float()
    dit.decoder.train()
    return params


class _Log:
    """train_log.csv (rows past a resumed step are dropped) and optional TensorBoard."""

    def __init__(self, folder: Path, start: int, tensorboard: bool) -> None:
        path = folder / lt.LOG_NAME
        rows = []
        if start and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=lt.LOG_FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise InvalidRequest("--tensorboard needs the tensorboard package (pip install tensorboard)") from e
            self.tb = SummaryWriter(str(folder / "tensorboard"))

    def row(self, step: int, loss: float, lr: float, grad: float, seconds: float, eta: float) -> None:
        self.writer.writerow({"step": step, "loss": f"{loss:.6g}", "lr": f"{lr:.6g}", "grad_norm": f"{grad:.6g}",
                              "seconds": f"{seconds:.3f}", "eta_seconds": f"{eta:.1f}"})
        self.file.flush()
        if self.tb is not None:
            self.tb.add_scalar("loss", loss, step)
            self.tb.add_scalar("lr", lr, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _step(dit, silence, data, step: int, cfg: lt.TrainConfig, device) -> float:
    """Forward + backward of every micro-batch of one optimiser step; returns the mean loss."""
    total = 0.0
    for micro in range(cfg.grad_accum):
        idx = lt.batch_indices(len(data), step, cfg, micro)
        seed = (cfg.seed * 1_000_003 + step) * 64 + micro
        gen = torch.Generator().manual_seed(seed)
        batch = lt.collate([data[i][1] for i in idx], cfg.max_frames, random.Random(seed), device)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # LoRA dropout draws from the global RNG
            torch.manual_seed(seed)
            loss = lt.flow_loss(dit, silence, batch, cfg, gen)
            if not torch.isfinite(loss):
                names = ", ".join(data[i][0].id for i in idx)
                raise lt.NonFiniteLoss(f"loss is {loss.item()} at step {step + 1}, micro-batch {micro} (songs: {names})")
            (loss / cfg.grad_accum).backward()
        total += float(loss.detach()) / cfg.grad_accum
    return total


def train(
    model, dataset, output, cfg: lt.TrainConfig | None = None, *, variant: str = "turbo", device=None,
    resume: bool = False, progress: Progress | None = None, root="checkpoints", offline: bool = False, dit=None,
) -> TrainResult:
    """Train an adapter on a built dataset; `dit=(model, silence)` skips loading (tests, benchmarks)."""
    cfg = cfg or lt.TrainConfig()
    cfg.check()
    device = resolve_device(device)
    data = load_dataset(dataset)
    output = Path(output)
    ckpt = lt.latest_checkpoint(output) if resume else None
    if resume and ckpt is None:
        raise InvalidRequest(f"{output}: nothing to resume (no checkpoints/step-*)")
    model_dit, silence = dit or load_model(model, variant, device, root, offline)
    cfg = cfg.resolved(model_dit.config.is_turbo)
    params = attach(model_dit, cfg)
    if cfg.gradient_checkpointing:
        lt.enable_checkpointing(model_dit)
    optimizer = lt.make_optimizer(params, cfg)
    start = lt.load_checkpoint(model_dit, optimizer, ckpt) if ckpt else 0
    output.mkdir(parents=True, exist_ok=True)
    (output / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2), encoding="utf-8")
    logger = _Log(output, start, cfg.tensorboard)
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lt.lr_factor(step, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss = _step(model_dit, silence, data, step, cfg, device)
            grad = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            optimizer.step()
            losses.append(loss)
            done = step + 1
            elapsed = time.perf_counter() - t0
            eta = elapsed / (done - start) * (cfg.steps - done)
            logger.row(done, loss, optimizer.param_groups[0]["lr"], grad, elapsed, eta)
            if progress:
                progress(done, cfg.steps, loss, eta)
            if done % cfg.save_every == 0 or done == cfg.steps:
                lt.save_checkpoint(model_dit, optimizer, done, output)
    finally:
        logger.close()
    lora.save_adapter(model_dit, output, lt.ADAPTER)
    log.info("trained %d steps in %.1f s; adapter in %s", cfg.steps - start, time.perf_counter() - t0, output)
    return TrainResult(output, cfg.steps, losses, start, time.perf_counter() - t0)

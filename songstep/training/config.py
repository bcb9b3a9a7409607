"""Training settings: one documented set of defaults (torch-free, so the CLI parser stays light)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from songstep.errors import InvalidRequest


@dataclass
class TrainConfig:
    steps: int = 1000
    rank: int = 64
    alpha: float | None = None  # None: 2 × rank
    dropout: float = 0.1
    kind: str = "lora"  # lora | lokr
    target_modules: tuple[str, ...] | None = None  # None: q/k/v/o_proj (songstep.lora.TARGET_MODULES)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    batch_size: int = 1
    grad_accum: int = 1
    timesteps: str = "auto"  # auto | turbo | logit-normal
    logit_mean: float = -0.4
    logit_std: float = 1.0
    cfg_dropout: float | None = None  # None: 0 for turbo timesteps, 0.15 otherwise
    max_frames: int | None = None  # random crop of longer songs (25 frames per second)
    save_every: int = 200
    seed: int = 42
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"  # adamw | adamw8bit
    tensorboard: bool = False

    def resolved(self, is_turbo: bool) -> TrainConfig:
        ts = self.timesteps if self.timesteps != "auto" else ("turbo" if is_turbo else "logit-normal")
        if ts not in ("turbo", "logit-normal"):
            raise InvalidRequest(f"timesteps must be auto, turbo or logit-normal, got {self.timesteps!r}")
        p = self.cfg_dropout if self.cfg_dropout is not None else (0.0 if ts == "turbo" else 0.15)
        return dataclasses.replace(self, timesteps=ts, cfg_dropout=p)

    def check(self) -> None:
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.save_every < 1:
            raise InvalidRequest("steps, rank, batch size, grad accumulation and save interval must be ≥ 1")
        if self.kind not in ("lora", "lokr"):
            raise InvalidRequest(f"adapter kind must be lora or lokr, got {self.kind!r}")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise InvalidRequest(f"optimizer must be adamw or adamw8bit, got {self.optimizer!r}")

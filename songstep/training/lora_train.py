"""LoRA / LoKr training of the DiT decoder with upstream's flow-matching objective.

Per step (upstream's training_losses): x0 = the song's VAE latents, x1 ~ N(0, I),
x_t = t·x1 + (1 − t)·x0, v = decoder(x_t, t, r = t, condition), loss = MSE(v, x1 − x0) over all
elements, in fp32. The condition is text2music's: caption and lyric encodings through the frozen
condition encoder, silence as source and timbre reference, an all-ones chunk mask.

Timesteps ("auto"): turbo checkpoints draw t uniformly from the 8 turbo shift-3 values
[1, .9545, .9, .8333, .75, .6429, .5, .3] with no CFG dropout (upstream's v1 trainer, matching how
turbo samples); base/sft checkpoints draw t = sigmoid(N(−0.4, 1)) and replace the whole encoder
sequence by the null embedding with p = 0.15 (the v2 trainer and the model's own training).

Defaults (`TrainConfig`): rank 64, alpha 2 × rank, dropout 0.1 on q/k/v/o of self and cross attention;
AdamW lr 1e-4, weight decay 0.01, warm-up 100 steps (at most a tenth of the run) then cosine to 0,
gradient clip 1.0, batch 1, 1000 steps, a checkpoint every 200 steps, seed 42; bf16 autocast on
CUDA, fp32 on CPU. Every random draw of step k comes from a generator seeded by (seed, k), so a
resumed run continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from songstep import lora
from songstep.errors import InvalidRequest, SongstepError
from songstep.sampling.schedules import turbo_times
from songstep.training.config import TrainConfig

log = logging.getLogger(__name__)

ADAPTER = "default"
CHECKPOINTS = "checkpoints"
LOG_NAME = "train_log.csv"
LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "seconds", "eta_seconds")


class NonFiniteLoss(SongstepError):
    """The training loss became NaN or infinite; the run stops at that step."""


def peft_config(cfg: TrainConfig):
    peft = lora._peft()
    targets = list(cfg.target_modules or lora.TARGET_MODULES)
    alpha = cfg.alpha if cfg.alpha is not None else 2.0 * cfg.rank
    if cfg.kind == "lokr":
        return peft.LoKrConfig(r=cfg.rank, alpha=alpha, rank_dropout=0.0, module_dropout=0.0, target_modules=targets)
    return peft.LoraConfig(r=cfg.rank, lora_alpha=alpha, lora_dropout=cfg.dropout, bias="none", target_modules=targets)


# -- the objective ----------------------------------------------------------------------------------
def sample_t(batch: int, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """[B] timesteps: one of the 8 turbo shift-3 values, or sigmoid(N(μ, σ))."""
    if cfg.timesteps == "turbo":
        values = torch.tensor(turbo_times(8, 3.0), dtype=torch.float32)
        return values[torch.randint(0, len(values), (batch,), generator=gen)]
    return torch.sigmoid(torch.randn(batch, generator=gen) * cfg.logit_std + cfg.logit_mean)


def condition(dit, silence: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder states, context latents) of text2music for the batch, through the frozen encoder,
    in the DiT's dtype."""
    dt = dit.dtype
    x0 = batch["target_latents"].to(dt)
    b, t, _ = x0.shape
    sil = silence if silence.shape[0] >= t else silence.repeat(-(-t // silence.shape[0]), 1)
    sil = sil.to(dt)
    frames = dit.config.timbre_fix_frame
    refer = sil[:frames][None].expand(b, -1, -1)
    if refer.shape[1] < frames:
        refer = refer.repeat(1, -(-frames // refer.shape[1]), 1)[:, :frames]
    with torch.no_grad():
        enc, _mask, ctx = dit.prepare_condition(
            batch["text_hidden_states"].to(dt), batch["text_attention_mask"],
            batch["lyric_hidden_states"].to(dt), batch["lyric_attention_mask"],
            refer, torch.arange(b, device=x0.device),
            hidden_states=x0, attention_mask=torch.ones(b, t, device=x0.device, dtype=dt),
            silence_latent=sil[None], src_latents=sil[:t][None].expand(b, -1, -1),
            chunk_masks=torch.ones(b, t, x0.shape[-1], device=x0.device, dtype=dt),
            is_covers=torch.zeros(b, dtype=torch.bool, device=x0.device),
        )
    return enc, ctx


def flow_loss(dit, silence, batch, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Upstream's flow-matching MSE for one batch (all randomness from `gen`, on the CPU)."""
    x0 = batch["target_latents"]
    b = x0.shape[0]
    enc, ctx = condition(dit, silence, batch)
    if cfg.cfg_dropout:
        drop = (torch.rand(b, generator=gen) < cfg.cfg_dropout).to(x0.device)
        enc = torch.where(drop[:, None, None], dit.null_condition_emb.to(enc.dtype).expand_as(enc), enc)
    t = sample_t(b, cfg, gen).to(device=x0.device)
    x1 = torch.randn(x0.shape, generator=gen).to(device=x0.device)
    xt = t[:, None, None] * x1 + (1 - t[:, None, None]) * x0
    cuda = x0.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        v = dit.decoder(xt.to(dit.dtype), t.to(dit.dtype), t.to(dit.dtype), enc.to(dit.dtype), ctx.to(dit.dtype))
    return F.mse_loss(v.float(), (x1 - x0).float())


# -- data ---------------------------------------------------------------------------------------------
def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    n = max(r.shape[0] for r in rows)
    return torch.stack([F.pad(r, (0, 0) * (r.dim() - 1) + (0, n - r.shape[0])) for r in rows])


def collate(items: list[dict[str, torch.Tensor]], max_frames: int | None, rng: random.Random, device) -> dict:
    """Crop latents to the shortest song (and `max_frames`) at random offsets; pad text."""
    t = min(i["target_latents"].shape[0] for i in items)
    t = min(t, max_frames) if max_frames else t
    crops = []
    for i in items:
        lat = i["target_latents"]
        off = rng.randrange(0, lat.shape[0] - t + 1)
        crops.append(lat[off : off + t])
    batch = {"target_latents": torch.stack(crops)}
    for k in ("text_hidden_states", "text_attention_mask", "lyric_hidden_states", "lyric_attention_mask"):
        batch[k] = _pad([i[k] for i in items])
    return {k: v.to(device) for k, v in batch.items()}


def batch_indices(n: int, step: int, cfg: TrainConfig, micro: int) -> list[int]:
    """Items of micro-batch `micro` of `step`: epochs are seeded shuffles, so any step can be
    recomputed on resume."""
    per_step = cfg.batch_size * cfg.grad_accum
    start = (step * per_step + micro * cfg.batch_size)
    out = []
    for k in range(start, start + cfg.batch_size):
        epoch, pos = divmod(k, n)
        order = list(range(n))
        random.Random(cfg.seed * 100_003 + epoch).shuffle(order)
        out.append(order[pos])
    return out


# -- optimisation ----------------------------------------------------------------------------------------
def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig):
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise InvalidRequest("--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                                 "or use the default adamw") from e
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up (at most a tenth of the run) then cosine decay to 0."""
    warm = min(cfg.warmup_steps, cfg.steps // 10)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def enable_checkpointing(dit) -> None:
    """Recompute each DiT layer's activations in the backward pass (less memory, more compute)."""
    from torch.utils.checkpoint import checkpoint

    for layer in dit.decoder.layers:
        plain = layer.forward
        layer.forward = lambda *a, _f=plain, **k: checkpoint(_f, *a, use_reentrant=False, **k)


# -- checkpoints (safetensors + JSON; no pickle) -------------------------------------------------------------
def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, prefix, tensors), _flatten(v, prefix, tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_flatten(v, prefix, tensors) for v in obj]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(dit, optimizer, step: int, folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / CHECKPOINTS / f"step-{step:06d}"
    tmp = path.with_name(path.name + ".tmp")
    lora.save_adapter(dit, tmp, ADAPTER)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(optimizer.state_dict(), "", tensors)
    save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": structure}), encoding="utf-8")
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.replace(path)
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(p for p in (folder / CHECKPOINTS).glob("step-*") if (p / "state.json").is_file() and not p.name.endswith(".tmp"))
    return found[-1] if found else None


def load_checkpoint(dit, optimizer, path: Path) -> int:
    from safetensors.torch import load_file

    grouped = lora._group(dit, lora.read_adapter_file(path / lora.WEIGHTS_NAME), path)
    lora.load_tensors(dit, ADAPTER, grouped, str(path))
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer.load_state_dict(_unflatten(state["optimizer"], tensors))
    return int(state["step"])

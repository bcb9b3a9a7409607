"""Load a DiT checkpoint directory exactly, or fail loudly.

Layouts: `config.json` + `model.safetensors`, or shards listed in `model.safetensors.index.json`
(the official repos), or a diffusers-format repository (see `diffusers_map`). The model is built on
the meta device, every tensor is checked against the expected name and shape before anything is
materialised, and then loaded with `load_state_dict(assign=True)`. Any problem raises
`CheckpointError` naming the file and the tensor; a half-loaded model is never returned.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from songstep.config import DiTConfig
from songstep.errors import CheckpointError, ModelNotFound
from songstep.loading import diffusers_map
from songstep.loading.files import INDEX_NAME, WEIGHTS_NAME, weight_files
from songstep.models.dit import DiTModel
from songstep.models.folders import check_finite
from songstep.models.precision import compute_dtype

log = logging.getLogger(__name__)

__all__ = ["INDEX_NAME", "WEIGHTS_NAME", "default_dtype", "load_dit", "read_tensors", "save_dit", "weight_files"]

CONFIG_NAME = "config.json"


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA GPUs with native bf16 (compute capability ≥ 8.0), fp32 on older GPUs and
    elsewhere; never fp16 (see `songstep.models.precision`)."""
    return compute_dtype(device)


def read_tensors(
    files: Iterable[Path], *, rename=None, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Every tensor of the files (optionally renamed; `rename(key) -> str | None`, None drops it),
    cast to dtype on device, plus where each came from. Corrupt or truncated files raise.
    A `rename` with a `for_file(path)` method gives each file its own rename function (the
    diffusers layout, where the same key means different tensors in different components)."""
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for path in files:
        file_rename = rename.for_file(path) if hasattr(rename, "for_file") else rename
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    name = file_rename(key) if file_rename else key
                    if name is None:
                        continue
                    if name in tensors:
                        raise CheckpointError(f"{path}: tensor {name!r} also in {origin[name]}")
                    t = f.get_tensor(key)
                    tensors[name] = t.to(device=device, dtype=dtype or t.dtype)
                    origin[name] = path
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    return tensors, origin


def check_tensors(
    expected: dict[str, torch.Size], tensors: dict[str, torch.Tensor], origin: dict[str, Path], where: Path
) -> None:
    """Every key present, none extra, every shape equal — else CheckpointError naming them."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors {_preview(missing)}")
    if unexpected:
        srcs = sorted({origin[k].name for k in unexpected})
        problems.append(f"unexpected tensors {_preview(unexpected)} in {', '.join(srcs)}")
    for key in sorted(set(expected) & set(tensors)):
        if tuple(tensors[key].shape) != tuple(expected[key]):
            problems.append(
                f"tensor {key!r} in {origin[key].name} has shape {list(tensors[key].shape)}, "
                f"expected {list(expected[key])}"
            )
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))


def _preview(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def build_meta(config: DiTConfig) -> DiTModel:
    with torch.device("meta"):
        return DiTModel(config)


def assemble(model: DiTModel, tensors: dict[str, torch.Tensor]) -> DiTModel:
    """Assign the checked tensors into the meta-built model and compute its buffers."""
    model.load_state_dict(tensors, strict=True, assign=True)
    model.reset_buffers()
    return model.eval().requires_grad_(False)


def load_dit(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> DiTModel:
    """Load a DiT folder (official or diffusers layout) onto `device` in `dtype`
    (default: bf16 on CUDA, fp32 otherwise)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelNotFound(f"{folder}: not a checkpoint directory")
    dtype = dtype or default_dtype(device)
    if diffusers_map.is_diffusers_layout(folder):
        config, files, rename = diffusers_map.plan(folder)
    else:
        config, files, rename = DiTConfig.from_file(folder / CONFIG_NAME), weight_files(folder), None
    model = build_meta(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tensors, origin = read_tensors(files, rename=rename, device=device, dtype=dtype)
    check_tensors(expected, tensors, origin, folder)
    check_finite(tensors.items(), str(folder))
    log.info("loaded %s (%d tensors, %s, %s)", folder, len(tensors), device, dtype)
    return assemble(model, tensors)


XL_ONLY_FIELDS = ("encoder_hidden_size", "encoder_intermediate_size", "encoder_num_attention_heads",
                  "encoder_num_key_value_heads")


def official_config(config: DiTConfig) -> dict:
    """`config` as the official config.json holds it: the 2B configs omit the XL-only `encoder_*`
    fields (a `null` there breaks diffusers' converter, which reads them with `.get(key, default)`)."""
    return {k: v for k, v in config.to_dict().items() if not (k in XL_ONLY_FIELDS and v is None)}


def save_dit(model: DiTModel, folder: str | Path, *, dtype: torch.dtype | None = None, max_shard_bytes: int | None = None) -> None:
    """Write a model in the official layout: config.json + model.safetensors, or shards with an
    index when `max_shard_bytes` is given (used for tiny test checkpoints)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(official_config(model.config), indent=2), encoding="utf-8")
    sd = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in sorted(model.state_dict().items())}
    if not max_shard_bytes:
        save_file(sd, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2), encoding="utf-8")

"""Tiny random checkpoints in the official layout, for tests and users' smoke runs.

`tiny_dit()` builds a DiT with the fixtures' tiny profile in milliseconds; its random init follows
the fixtures' recipe (the fixtures README, section 2.2: keys visited in sorted order from one seeded generator, ≥2-D
weights ~ N(0, fan_in^-1/2), `*norm.weight` 1 + 0.1·N, biases 0.1·N, AdaLN tables 0.3·N, special
tokens, the null embedding and any other 1-D tensor N(0, 1)), so with the fixtures' seeds it reproduces their tiny
checkpoints bit for bit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from songstep.config import DiTConfig, tiny_config
from songstep.loading.checkpoint import assemble, build_meta, save_dit
from songstep.models.dit import DiTModel

_NORM_SUFFIXES = ("norm.weight", "layernorm.weight")
_SPECIAL = ("special_token", "special_tokens", "null_condition_emb")


def _init_spec(key: str, shape: torch.Size) -> tuple[float, float]:
    """(mean, std) of one tensor under the fixtures' recipe."""
    leaf = key.rsplit(".", 1)[-1]
    if key.endswith(_NORM_SUFFIXES):
        return 1.0, 0.1
    if leaf in _SPECIAL:
        return 0.0, 1.0
    if leaf == "scale_shift_table":
        return 0.0, 0.3
    if leaf == "bias":
        return 0.0, 0.1
    if len(shape) < 2:
        return 0.0, 1.0  # the recipe's fallback (it catches `decoder.norm_out.weight`)
    if key.endswith("proj_out.1.weight") and key.startswith("decoder."):
        fan_in = shape[0]  # ConvTranspose1d stores [in, out, k]
    else:
        fan_in = int(torch.Size(shape[1:]).numel())
    return 0.0, fan_in**-0.5


def random_weights(model: DiTModel, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, ref in sorted(model.state_dict().items()):
        mean, std = _init_spec(key, ref.shape)
        out[key] = (torch.randn(ref.shape, generator=gen) * std + mean).to(dtype)
    return out


def tiny_dit(
    seed: int = 0,
    *,
    config: DiTConfig | None = None,
    xl: bool = False,
    is_turbo: bool = True,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> DiTModel:
    """A seeded random DiT (tiny profile unless `config` is given), ready to run on CPU."""
    cfg = config or tiny_config(xl=xl, is_turbo=is_turbo, **overrides)
    model = build_meta(cfg)
    return assemble(model, random_weights(model, seed, dtype))


def write_tiny_dit(
    folder: str | Path,
    seed: int = 0,
    *,
    config: DiTConfig | None = None,
    xl: bool = False,
    is_turbo: bool = True,
    layout: str = "auto",
    **overrides: Any,
) -> Path:
    """Write a tiny DiT folder as the official repos lay theirs out: 2B → one bf16
    `model.safetensors`; XL → fp32 shards with `model.safetensors.index.json` (layout "auto"), or
    force "single-bf16" / "sharded-fp32"."""
    model = tiny_dit(seed, config=config, xl=xl, is_turbo=is_turbo, **overrides)
    if layout == "auto":
        layout = "sharded-fp32" if model.config.is_xl else "single-bf16"
    if layout == "single-bf16":
        save_dit(model, folder, dtype=torch.bfloat16)
    elif layout == "sharded-fp32":
        total = sum(p.numel() * 4 for p in model.state_dict().values())
        save_dit(model, folder, dtype=torch.float32, max_shard_bytes=max(total // 3, 1))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return Path(folder)


# config.json's lyric_alignment_layers_config of the tree's DiTs (the 2 B default names heads the
# tiny models lack), stored as config.json stores it
TINY_ALIGNMENT_HEADS = {"1": [0, 3], "2": [1], "3": [2, 3]}


# -- a whole checkpoint tree ---------------------------------------------------------------------
DIT_FOLDERS = {"turbo": "acestep-v15-turbo", "base": "acestep-v15-base", "sft": "acestep-v15-sft"}


def write_tiny_tree(root: str | Path, seed: int = 0, *, variants=("turbo", "base"), lm: bool = True) -> Path:
    """A complete tiny random checkpoint tree in the official layout — DiT folders (with
    `silence_latent.pt`), `vae/`, `Qwen3-Embedding-0.6B/` and, when available, a tiny planner LM in
    `acestep-5Hz-lm-1.7B/` — that every songstep command accepts as `--model ROOT`."""
    from songstep.testing.tiny_components import write_silence_latent, write_tiny_text_encoder, write_tiny_vae

    root = Path(root)
    for i, variant in enumerate(variants):
        folder = root / DIT_FOLDERS[variant]
        cfg = tiny_config(is_turbo=variant == "turbo")
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "lyric_alignment_layers_config": TINY_ALIGNMENT_HEADS})
        write_tiny_dit(folder, seed + i, config=cfg)
        write_silence_latent(folder / "silence_latent.pt", seed=seed)
    write_tiny_vae(root / "vae", seed)
    write_tiny_text_encoder(root / "Qwen3-Embedding-0.6B", seed, hidden_size=tiny_config().text_hidden_dim)
    if lm:
        try:
            from songstep.testing.tiny_lm import write_tiny_lm
        except ImportError:  # pragma: no cover - the planner issue adds it
            return root
        write_tiny_lm(root / "acestep-5Hz-lm-1.7B", seed)
    return root


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m songstep.testing.tiny", description=write_tiny_tree.__doc__)
    parser.add_argument("root", type=Path, help="directory to write the tree into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-lm", action="store_true", help="skip the planner LM")
    args = parser.parse_args(argv)
    write_tiny_tree(args.root, args.seed, lm=not args.no_lm)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

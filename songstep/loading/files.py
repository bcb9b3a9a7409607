"""Finding a component's safetensors files: one weights file, or the shards its index lists.

Shared by the official-layout loader (`songstep.loading.checkpoint`) and the diffusers-layout key
map (`songstep.loading.diffusers_map`), so neither imports the other for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from songstep.errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def weight_files(folder: Path, weights_name: str = WEIGHTS_NAME, index_name: str = INDEX_NAME) -> list[Path]:
    """The safetensors files of a folder, in index order: one `weights_name` file, or the shards
    that `index_name` lists (each must exist)."""
    single, index = folder / weights_name, folder / index_name
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = list(dict.fromkeys(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: unreadable shard index ({e})") from e
        if not names:
            raise CheckpointError(f"{index}: empty weight_map")
        files = [folder / str(n) for n in names]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index}: shard {f.name} listed but missing")
        return files
    if single.is_file():
        return [single]
    raise CheckpointError(f"{folder}: no {weights_name} or {index_name}")

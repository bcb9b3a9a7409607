"""Component folders loaded through transformers / diffusers (text encoder, VAE, planner LM):
one rule for "not there" versus "there but unusable"."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from songstep.errors import CheckpointError, ModelNotFound

# what transformers / diffusers raise for a broken folder (bad JSON, missing weights, shapes, …)
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError)


@contextlib.contextmanager
def component_folder(path: str | Path, what: str) -> Iterator[Path]:
    """Yield `path` as a `Path`. `ModelNotFound` when it has no config.json; an error of the
    libraries' loaders inside the block becomes `CheckpointError` naming `what` and the folder."""
    root = Path(path)
    if not (root / "config.json").is_file():
        raise ModelNotFound(f"no {what} at {root} (config.json missing)")
    try:
        yield root
    except CheckpointError:
        raise
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"cannot load the {what} from {root}: {exc}") from exc

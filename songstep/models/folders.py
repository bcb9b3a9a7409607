"""Component folders loaded through transformers / diffusers (text encoder, VAE, planner LM):
one rule for "not there" versus "there but unusable"."""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
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
        with quiet_loaders():
            yield root
    except CheckpointError:
        raise
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"cannot load the {what} from {root}: {exc}") from exc


@contextlib.contextmanager
def quiet_loaders() -> Iterator[None]:
    """Inside our loaders, transformers' and diffusers' progress bars, their loading chatter
    (below ERROR) and deprecation warnings stay out of the user's output; library users who want
    them turn on the `songstep` logger at DEBUG level."""
    if logging.getLogger("songstep").isEnabledFor(logging.DEBUG):
        yield
        return
    chatty = [logging.getLogger(name) for name in ("torch", "torchao")]  # import-time notices
    levels = [lg.level for lg in chatty]
    for lg in chatty:
        lg.setLevel(logging.ERROR)
    undo = []
    for name in ("transformers", "diffusers"):
        try:
            lib = importlib.import_module(f"{name}.utils.logging")
        except ImportError:  # pragma: no cover - both are dependencies
            continue
        level, bars = lib.get_verbosity(), lib.is_progress_bar_enabled()
        lib.set_verbosity_error()
        lib.disable_progress_bar()
        undo.append((lib, level, bars))
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        for lg, level in zip(chatty, levels):
            lg.setLevel(level)
        for lib, level, bars in undo:
            lib.set_verbosity(level)
            if bars:
                lib.enable_progress_bar()

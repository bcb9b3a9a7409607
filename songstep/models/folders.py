"""Component folders loaded through transformers / diffusers (text encoder, VAE, planner LM):
one rule for "not there" versus "there but unusable", and the same strictness as the DiT loader
(every tensor present, none extra, every shape right, every value finite, safetensors only)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from songstep.errors import CheckpointError, ModelNotFound

# what transformers / diffusers raise for a broken folder (bad JSON, missing weights, shapes, …)
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@contextlib.contextmanager
def component_folder(path: str | Path, what: str) -> Iterator[Path]:
    """Yield `path` as a `Path`. `ModelNotFound` when it has no config.json; `CheckpointError`
    when its only weights are pickles (never read); an error of the libraries'
    loaders inside the block becomes `CheckpointError` naming `what` and the folder."""
    root = Path(path)
    if not (root / "config.json").is_file():
        raise ModelNotFound(f"no {what} at {root} (config.json missing)")
    require_safetensors(root, what)
    try:
        with quiet_loaders():
            yield root
    except CheckpointError:
        raise
    except LOAD_ERRORS as exc:
        text = " ".join(str(exc).split())
        raise CheckpointError(f"cannot load the {what} from {root}: {text}") from exc


def weight_names(root: Path) -> list[str]:
    """The safetensors files of a folder (for messages)."""
    return sorted(p.name for p in root.glob("*.safetensors"))


def require_safetensors(root: Path, what: str) -> None:
    """`CheckpointError` for a folder whose only weights are pickles (`pytorch_model.bin`, …):
    they are refused, never read. (A folder without any weights fails in the loader.)"""
    if weight_names(root):
        return
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"cannot load the {what} from {root}: it holds only pickled weights ({', '.join(pickles)}); "
            "songstep loads safetensors only (pickles can run code): download the .safetensors files "
            "or convert them with save_pretrained(..., safe_serialization=True) where you trust the source"
        )


def _keys(values: Any) -> list[str]:
    out = []
    for v in values or ():
        out.append(str(v[0]) if isinstance(v, tuple | list) else str(v))
    return sorted(out)


def _preview(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def check_loading_info(info: Mapping[str, Any], root: Path, what: str) -> None:
    """Raise `CheckpointError` naming the files and keys when transformers' / diffusers'
    `output_loading_info` reports missing, unexpected or mis-shaped tensors (which they would
    otherwise fill in randomly or drop with a warning)."""
    problems = []
    for field, label in (("missing_keys", "missing tensors"), ("unexpected_keys", "unexpected tensors"),
                         ("mismatched_keys", "tensors of the wrong shape")):
        keys = _keys(info.get(field))
        if keys:
            problems.append(f"{label} {_preview(keys)}")
    errors = [str(e) for e in info.get("error_msgs") or ()]
    if errors:
        problems.append("; ".join(" ".join(e.split()) for e in errors)[:500])
    if problems:
        files = ", ".join(weight_names(root)) or "no weight files"
        raise CheckpointError(f"the {what} at {root} ({files}) does not match its config: " + "; ".join(problems))


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """`CheckpointError` naming the tensors that hold NaN or infinite values."""
    bad = []
    for name, t in tensors:
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    if bad:
        raise CheckpointError(f"{where}: non-finite values (NaN or inf) in tensors {_preview(sorted(bad))}")


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

"""Placeholder until the diffusers key map lands: detects nothing."""

from __future__ import annotations

from pathlib import Path


def is_diffusers_layout(folder: Path) -> bool:
    return False


def plan(folder: Path):  # pragma: no cover - replaced by the real map
    raise NotImplementedError

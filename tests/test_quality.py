"""Code-quality gates run with the test suite (so CI's single test command covers them):
ruff, the import-linter layer contracts of ARCHITECTURE.md, file sizes, no prints or pickles."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> list[str]:
    exe = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(exe).exists():
        pytest.fail(f"{name} is not installed (pip install -e '.[dev]')")
    return [exe]


def test_ruff_clean() -> None:
    result = subprocess.run([*_tool("ruff"), "check", "songstep", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layers_kept() -> None:
    result = subprocess.run(_tool("lint-imports"), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_library_files_small_no_prints_no_pickles() -> None:
    offenders = []
    for path in (ROOT / "songstep").rglob("*.py"):
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if len(text.encode()) > 30_000:
            offenders.append(f"{rel}: {len(text.encode())} bytes (limit 30 KB)")
        if path.name != "cli.py" and re.search(r"^\s*print\(", text, re.M):
            offenders.append(f"{rel}: print() in the library")
        if "trust_remote_code=True" in text or re.search(r"torch\.load\((?![^)]*weights_only=True)", text):
            offenders.append(f"{rel}: loads code or pickles")
    assert offenders == []

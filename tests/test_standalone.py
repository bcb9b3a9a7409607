"""The repository stands alone: no code or doc points at spec files it does not contain."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"§|\.\./shared|shared/spec|\bspec (dit|pipeline|features)\.md")


def test_no_references_to_spec_files_outside_the_repository() -> None:
    files = [*ROOT.joinpath("songstep").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py"),
             *ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md",
             *(p for p in ROOT.joinpath("tests").rglob("*.py") if "fixtures" not in p.parts)]
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in files
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if PATTERN.search(line) and p.name != "test_standalone.py"]
    assert offenders == []

"""Every reference case in tests/fixtures/reference runs through `run_case` and matches.

Tolerances are the fixtures README's recommendations: single forwards atol 1e-5 and
rtol 1e-5; sampling loops atol 5e-5 (their outputs and recorded trajectories, which accumulate over
the loop just like the output); integer outputs exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from songstep.testing.reference import case_kind, run_case, run_case_detailed

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
FORWARD = dict(atol=1e-5, rtol=1e-5)
LOOP = dict(atol=5e-5, rtol=0.0)


def _cases():
    for index_path in sorted(REF.glob("golden*/*/index.json")):
        index = json.loads(index_path.read_text())
        for entry in index["cases"]:
            yield pytest.param(index_path.parent, entry, id=f"{index_path.parent.parent.name}/{index_path.parent.name}/{entry['case']}")


def assert_matches(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], loop: bool) -> None:
    declared_out = [k for k in ref if k.startswith("out.")]
    assert declared_out, "case declares no outputs"
    for key in declared_out:
        assert key in out, f"runner did not return {key}"
    for key, value in out.items():
        expected = ref[key]
        assert tuple(value.shape) == tuple(expected.shape), key
        if not expected.is_floating_point():
            assert torch.equal(value.to(expected.dtype), expected), f"{key} differs"
            continue
        tol = LOOP if loop else FORWARD
        torch.testing.assert_close(value.to(expected.dtype), expected, **tol, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("golden_dir,entry", list(_cases()))
def test_reference_case(golden_dir: Path, entry: dict) -> None:
    ref = load_file(str(golden_dir / entry["file"]))
    out = run_case(golden_dir, entry["case"])
    assert_matches(out, ref, loop=case_kind(entry) in ("generate", "flowedit"))


@pytest.mark.parametrize(
    "golden_dir,entry",
    [p for p in _cases() if p.values[1]["case"].startswith("gen") or "in.noise" in p.values[1]["tensors"]],
)
def test_noise_is_redrawn_bit_exact(golden_dir: Path, entry: dict) -> None:
    """Every noise tensor the case stores is drawn again by songstep from the recorded seeds (and,
    for SDE, the recorded global seed) and equals the stored one bit for bit."""
    ref = load_file(str(golden_dir / entry["file"]))
    _, drawn = run_case_detailed(golden_dir, entry["case"])
    stored = [k for k in ("in.noise", "in.retake_noise", "in.noise_mixed", "in.sde_noise", "in.fwd_noise") if k in ref]
    assert stored, "sampler case without stored noise"
    for key in stored:
        assert key in drawn, f"{key} was not drawn"
        assert torch.equal(drawn[key], ref[key]), f"{key} differs"

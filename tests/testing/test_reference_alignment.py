"""Every lyric-alignment reference case (tests/fixtures/reference/alignment/<family>/) runs through
`run_case` and matches at the fixtures README's tolerances: attention maps and energies
atol 5e-5, the aligner's processed matrix atol 1e-4, score components atol 1e-6; paths, type mask,
token times, LRC text, line and token texts and the 4-decimal scores exact. Cases are found by
globbing, so new case folders and index entries run too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from songstep.testing.reference import case_kind, run_alignment_details, run_case, run_case_detailed

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "alignment"


def _cases():
    for index_path in sorted(REF.glob("*/index.json")):
        index = json.loads(index_path.read_text(encoding="utf-8"))
        for entry in index["cases"]:
            yield pytest.param(index_path.parent, entry, id=f"{index_path.parent.name}/{entry['case']}")


CASES = list(_cases())


def _tolerance(name: str) -> dict[str, float]:
    if name.endswith(("token_start", "token_end")):
        return dict(atol=0.0, rtol=0.0)
    if "calc" in name:
        return dict(atol=1e-4, rtol=0.0)
    if name.endswith("components"):
        return dict(atol=1e-6, rtol=0.0)
    return dict(atol=5e-5, rtol=0.0)  # attention maps, vis/energy matrices


def test_cases_were_found() -> None:
    assert len(CASES) >= 9


@pytest.mark.parametrize("case_dir,entry", CASES)
def test_alignment_case_tensors(case_dir: Path, entry: dict) -> None:
    assert case_kind(entry) == "alignment"
    ref = load_file(str(case_dir / entry["file"]))
    out = run_case(case_dir, entry["case"])
    declared = [k for k in ref if k.startswith("out.")]
    assert declared
    for key in declared:
        assert key in out, f"runner did not return {key}"
        value, expected = out[key], ref[key]
        assert tuple(value.shape) == tuple(expected.shape), key
        if expected.is_floating_point():
            torch.testing.assert_close(value.to(expected.dtype), expected, **_tolerance(key), msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(value.to(expected.dtype), expected), f"{key} differs"


@pytest.mark.parametrize("case_dir,entry", CASES)
def test_alignment_case_texts_and_scores(case_dir: Path, entry: dict) -> None:
    result = run_alignment_details(case_dir, entry["case"])
    assert result.lrc_text == entry["lrc_text"]
    assert [t.text for t in result.tokens] == entry["incremental_token_texts"]
    assert [t.token_id for t in result.tokens] == entry["pure_lyric_ids"]
    assert [(t["token_id"], t["text"], t["start"], t["end"]) for t in entry["tokens"]] == [
        (t.token_id, t.text, t.start, t.end) for t in result.tokens
    ]
    expected_lines = [(s["text"], s["start"], s["end"], tuple(s["token_range"])) for s in entry["sentences"]]
    assert [(ln.text, ln.start, ln.end, ln.token_range) for ln in result.lines] == expected_lines
    assert result.tensors["out.score.type_mask"].tolist() == entry["type_mask"]
    for name in ("lm", "dit"):
        parts, want = result.scores[name], entry["score"][name]
        assert parts.score == want["score"] == entry["score"]["handler"][f"{name}_score"]
        for field in ("coverage", "monotonicity", "confidence"):
            assert getattr(parts, field) == pytest.approx(want[field], abs=1e-6), field
        assert parts.raw == pytest.approx(want["cov2_mono2_conf"], abs=1e-6)


@pytest.mark.parametrize("case_dir,entry", CASES)
def test_alignment_noise_is_redrawn_bit_exact(case_dir: Path, entry: dict) -> None:
    ref = load_file(str(case_dir / entry["file"]))
    _, drawn = run_case_detailed(case_dir, entry["case"])
    assert torch.equal(drawn["in.noise"], ref["in.noise"])

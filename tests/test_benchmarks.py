"""`python -m benchmarks --tiny` end to end on the CPU: rows for every chosen stage with diffusers'
DiT beside ours (same weights, so the same numbers), floors, the table and the plot."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

from benchmarks.__main__ import main  # noqa: E402

KEYS = {"stage", "impl", "duration_s", "batch", "ms", "peak_mb", "floor_ms"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--out", str(out), "--tiny", "--stages", "text", "dit", "vae", "e2e", "--durations", "10",
            "--batches", "1", "--repeats", "1", "--steps", "2", "--compile", "aot_eager", "--no-int8"]
    assert main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_rows(results) -> None:
    _, rows = results
    assert rows and all(KEYS <= r.keys() for r in rows)
    found = {(r["stage"], r["impl"]) for r in rows}
    assert {("text", "songstep"), ("dit", "songstep"), ("dit", "diffusers"), ("dit", "songstep-compiled (aot_eager)"),
            ("vae", "songstep-tiled"), ("vae", "songstep-untiled"), ("e2e", "songstep")} <= found
    for r in rows:
        assert r["ms"] > 0 and r["floor_ms"] > 0 and r["floor_ratio"] == pytest.approx(r["floor_ms"] / r["ms"], rel=1e-2)
        assert r["batch"] == 1 and r["duration_s"] in (None, 10.0)


def test_same_network_and_floors(results) -> None:
    _, rows = results
    dit = {r["impl"]: r for r in rows if r["stage"] == "dit"}
    # diffusers' port holds our weights: fp32 forwards agree; the compiled bucketed forward too
    assert dit["diffusers"]["max_abs_err"] < 1e-4 * dit["diffusers"]["ref_abs_max"]
    compiled = dit["songstep-compiled (aot_eager)"]
    assert compiled["max_abs_err"] < 1e-4 * compiled["ref_abs_max"]
    assert dit["songstep"]["floor_ms"] == dit["diffusers"]["floor_ms"]  # the same FLOPs and weights
    e2e = next(r for r in rows if r["stage"] == "e2e")
    parts = [r for r in rows if r["impl"] in ("songstep", "songstep-tiled") and r["stage"] in ("text", "vae")]
    expected = sum(r["floor_ms"] for r in parts) + 2 * dit["songstep"]["floor_ms"]
    assert e2e["floor_ms"] == pytest.approx(expected, rel=1e-3)
    assert set(e2e["stage_ms"]) >= {"dit", "vae", "total"}


def test_table_and_plot(results) -> None:
    out, rows = results
    table = (out / "results.md").read_text()
    assert table.count("\n| dit |") == sum(r["stage"] == "dit" for r in rows)
    assert "| dit | diffusers | 10 | 1 |" in table
    pytest.importorskip("matplotlib")  # the [dev] extra
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    meta = json.loads((out / "meta.json").read_text())
    assert meta["peaks_source"] == "measured" and meta["peak_tflops"] > 0

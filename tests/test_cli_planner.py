"""`songstep plan`, `create-sample`, `understand` and `generate --thinking` on the tiny tree (CPU)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import soundfile as sf

from songstep.cli import main
from songstep.constants import HOP_LENGTH, SAMPLE_RATE
from songstep.prompts import audio_code_ids

pytest.importorskip("llguidance")

FIELDS = {"caption", "lyrics", "bpm", "keyscale", "timesignature", "duration", "language"}


def _run(capsys, *args: str):
    code = main(list(args))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _lm(tiny_tree) -> list[str]:
    return ["--model", str(tiny_tree), "--device", "cpu", "--lm", "1.7B", "--max-new-tokens", "60"]


def test_plan_prints_json(tiny_tree, capsys):
    out = _run(capsys, "plan", *_lm(tiny_tree), "--caption", "lofi", "--duration", "10", "--seed", "3")
    plan = json.loads(out)
    assert FIELDS <= set(plan) and plan["seed"] == 3 and plan["duration"] == 10.0
    assert plan["code_count"] == 50 == len(audio_code_ids(plan["audio_codes"]))
    plans = json.loads(_run(capsys, "plan", *_lm(tiny_tree), "--duration", "10", "--bpm", "90", "--seed", "3",
                            "--batch", "2", "--no-thinking"))
    assert [p["seed"] for p in plans] == [3, 4] and all(p["bpm"] == 90 and p["code_count"] == 0 for p in plans)


def test_create_sample_prints_json(tiny_tree, capsys):
    desc = json.loads(_run(capsys, "create-sample", "a calm ambient piece", *_lm(tiny_tree), "--seed", "1",
                           "--language", "en", "--instrumental"))
    assert FIELDS <= set(desc) and desc["language"] == "en" and desc["instrumental"] is True


def test_understand_prints_json(tiny_tree, tmp_path, capsys):
    wav = tmp_path / "clip.wav"
    noise = 0.1 * np.random.default_rng(0).standard_normal((SAMPLE_RATE, 2)).astype(np.float32)
    sf.write(wav, noise, SAMPLE_RATE, subtype="FLOAT")
    desc = json.loads(_run(capsys, "understand", str(wav), *_lm(tiny_tree), "--seed", "2"))
    assert FIELDS <= set(desc)
    codes = tmp_path / "codes.txt"
    codes.write_text("".join(f"<|audio_code_{i}|>" for i in (5, 9, 700)))
    assert FIELDS <= set(json.loads(_run(capsys, "understand", str(codes), *_lm(tiny_tree), "--seed", "2")))


def test_understand_without_lm_is_a_clear_error(tiny_tree, tmp_path, capsys):
    codes = tmp_path / "codes.txt"
    codes.write_text("<|audio_code_5|>")
    assert main(["understand", str(codes), "--model", str(tiny_tree), "--device", "cpu", "--lm", "none"]) == 2
    assert "needs the planner LM" in capsys.readouterr().err


def test_generate_with_thinking(tiny_tree, tmp_path, capsys):
    out = _run(capsys, "generate", *_lm(tiny_tree), "--caption", "lofi", "--duration", "10", "--seed", "5",
               "--thinking", "--quiet", "--output-dir", str(tmp_path))
    audio, sidecar = [p for p in out.split()]
    doc = json.loads(open(sidecar).read())
    codes = len(audio_code_ids(doc["params"]["audio_codes"]))
    assert codes == 50 and doc["params"]["task"] == "text2music" and doc["params"]["runs_as"] == "cover" and doc["params"]["seed"] == 5
    assert sf.info(audio).frames == codes * 5 * HOP_LENGTH
    out = _run(capsys, "generate", *_lm(tiny_tree), "--caption", "lofi", "--duration", "10", "--bpm", "90",
               "--key", "C major", "--time-signature", "4", "--seed", "5", "--no-thinking", "--quiet",
               "--output-dir", str(tmp_path / "plain"))
    doc = json.loads(open(out.split()[1]).read())
    assert "planner" not in doc["params"] and doc["params"]["task"] == "text2music"


def test_plan_shows_progress_unless_quiet(tiny_tree, capsys):
    args = ["plan", *_lm(tiny_tree), "--caption", "lofi", "--duration", "10", "--seed", "3"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "planning" in err and "writing codes" in err and "tok" in err
    assert main([*args, "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "writing codes" not in quiet.err and json.loads(quiet.out)["code_count"] == 50


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm installed")
def test_vllm_backend_without_the_extra_is_a_clear_error(tiny_tree, capsys):
    assert main(["plan", *_lm(tiny_tree), "--duration", "10", "--lm-backend", "vllm"]) == 1
    assert "songstep[vllm]" in capsys.readouterr().err

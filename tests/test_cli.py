"""The `songstep` command end to end on the tiny checkpoint tree (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from songstep.audio import read_tags
from songstep.cli import main
from songstep.constants import HOP_LENGTH, SAMPLE_RATE


def _songstep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("songstep") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "songstep"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def _outputs(stdout: str) -> tuple[Path, Path]:
    lines = [Path(line) for line in stdout.strip().splitlines()]
    audio = next(p for p in lines if p.suffix != ".json")
    sidecar = next(p for p in lines if p.suffix == ".json")
    return audio, sidecar


def test_generate_through_the_real_cli(tiny_tree, tmp_path) -> None:
    common = ["generate", "--model", str(tiny_tree), "--caption", "lofi piano", "--duration", "12.34",
              "--format", "wav", "--quiet", "--device", "cpu"]
    first = _songstep(*common, "--seed", "7", "--output-dir", str(tmp_path / "a"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    audio, sidecar = _outputs(first.stdout)
    info = sf.info(str(audio))
    frames = int(12.3 * SAMPLE_RATE) // HOP_LENGTH
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, frames * HOP_LENGTH)
    doc = json.loads(sidecar.read_text())
    assert doc["params"]["frames"] == frames and doc["params"]["samples"] == frames * HOP_LENGTH
    assert doc["params"]["seed"] == 7 and "dit" in doc["timings"]
    tags = read_tags(audio)
    assert tags["caption"] == "lofi piano" and tags["seed"] == 7 and "timings" not in tags
    again = _songstep(*common, "--seed", "7", "--output-dir", str(tmp_path / "b"), cwd=tmp_path)
    other = _songstep(*common, "--seed", "8", "--output-dir", str(tmp_path / "c"), cwd=tmp_path)
    assert again.returncode == 0 and other.returncode == 0
    assert _outputs(again.stdout)[0].read_bytes() == audio.read_bytes()
    assert _outputs(other.stdout)[0].read_bytes() != audio.read_bytes()


@pytest.mark.parametrize("args", [
    ["cover", "--strength", "0.5", "--noise-strength", "0.2"],
    ["repaint", "--start", "-1", "--end", "3"],
    ["add-layer", "--track", "guitar"],
    ["extract", "--track", "vocals"],
    ["complete", "--tracks", "drums,bass"],
])
def test_task_commands_are_deterministic(tiny_tree, source_wav, tmp_path, capsys, args) -> None:
    outputs = []
    for run, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        code = main([*args, "--model", str(tiny_tree), "--source", str(source_wav), "--seed", seed,
                     "--steps", "2", "--quiet", "--device", "cpu", "--format", "flac",
                     "--output-dir", str(tmp_path / run)])
        assert code == 0
        audio, sidecar = _outputs(capsys.readouterr().out)
        assert sidecar.is_file() and audio.suffix == ".flac"
        outputs.append(audio.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_errors_are_one_line_with_nonzero_exit(tiny_tree, tmp_path, capsys) -> None:
    code = main(["generate", "--model", str(tiny_tree), "--duration", "3", "--quiet", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: duration must be between 10 and 600") and "\n" not in err
    code = main(["extract", "--model", str(tiny_tree), "--variant", "turbo", "--source", "x.wav", "--track", "vocals", "--quiet"])
    assert code == 2 and "needs a base or sft model" in capsys.readouterr().err
    code = main(["cover", "--model", str(tiny_tree), "--source", str(tmp_path / "missing.wav"), "--quiet"])
    assert code == 2 and capsys.readouterr().err.startswith("error: ")
    code = main(["generate", "--model", str(tmp_path / "not-loaded"), "--duration", "10", "--loudness", "3", "--quiet"])
    assert code == 2 and "between -70 and 0 LUFS" in capsys.readouterr().err  # checked before loading
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_loudness_flag(tiny_tree, tmp_path, capsys) -> None:
    pytest.importorskip("pyloudnorm")
    code = main(["generate", "--model", str(tiny_tree), "--caption", "lofi", "--duration", "10", "--seed", "1",
                 "--loudness", "-20", "--quiet", "--device", "cpu", "--output-dir", str(tmp_path)])
    assert code == 0
    audio, sidecar = _outputs(capsys.readouterr().out)
    assert json.loads(sidecar.read_text())["params"]["level"] == "-20 LUFS"
    assert read_tags(audio)["level"] == "-20 LUFS"


def test_info_and_download_list(capsys) -> None:
    assert main(["info", "--root", "nowhere"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"] in ("cpu", "cuda") and "tier" in info
    assert main(["download", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "acestep-v15-turbo" in listing or "ACE-Step/Ace-Step1.5" in listing

"""The training commands and `--lora` through `songstep.cli.main`."""

from __future__ import annotations

import pytest
import soundfile as sf

from songstep.cli import main

pytest.importorskip("peft")  # the [train] extra


def test_dataset_build_empty_folder_exits_2(tiny_tree, tmp_path, capsys) -> None:
    (tmp_path / "songs").mkdir()
    code = main(["dataset", "build", str(tmp_path / "songs"), "--model", str(tiny_tree), "--output", str(tmp_path / "ds"),
                 "--device", "cpu", "--quiet"])
    assert code == 2 and "no audio files" in capsys.readouterr().err


def test_train_then_generate_with_lora(tiny_tree, dataset_dir, tmp_path, capsys) -> None:
    out = tmp_path / "adapter"
    code = main(["train", "lora", "--model", str(tiny_tree), "--dataset", str(dataset_dir), "--output", str(out),
                 "--steps", "3", "--rank", "2", "--lr", "0.01", "--save-every", "2", "--device", "cpu", "--quiet"])
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    assert (out / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    wavs = {}
    for label, extra in (("plain", []), ("lora", ["--lora", f"{out}:0.8"]), ("zero", ["--lora", f"{out}:0"])):
        code = main(["generate", "--model", str(tiny_tree), "--device", "cpu", "--caption", "synth", "--duration", "10",
                     "--steps", "2", "--seed", "1", "--output-dir", str(tmp_path / label), "--name", "x", "--quiet",
                     "--lm", "none", *extra])
        assert code == 0
        wavs[label] = sf.read(tmp_path / label / "x.wav")[0]
    assert (wavs["plain"] == wavs["zero"]).all()
    assert abs(wavs["plain"] - wavs["lora"]).max() > 1e-4


def test_train_missing_dataset_exits_2(tiny_tree, tmp_path, capsys) -> None:
    code = main(["train", "lora", "--model", str(tiny_tree), "--dataset", str(tmp_path / "none"), "--output",
                 str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    assert code == 2 and "no manifest.json" in capsys.readouterr().err

"""`--from` replays a sidecar (any task) or a TOML file to the same samples; bad values are reported
before anything loads."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from songstep.cli import main


def _paths(out: str):
    lines = out.strip().splitlines()
    return [p for p in lines if not p.endswith(".json")], [p for p in lines if p.endswith(".json")]


@pytest.mark.parametrize("command,extra", [
    ("generate", ["--caption", "lofi piano", "--duration", "10", "--batch", "2", "--key", "Am"]),
    ("cover", ["--caption", "jazz", "--strength", "0.6", "--noise-strength", "0.3"]),
])
def test_from_sidecar_remakes_the_same_samples(tiny_tree, source_wav, tmp_path, capsys, command, extra) -> None:
    src = ["--source", str(source_wav)] if command == "cover" else []
    code = main([command, "--model", str(tiny_tree), "--device", "cpu", "--quiet", "--seed", "7", "--steps", "3",
                 *src, *extra, "--output-dir", str(tmp_path / "a")])
    assert code == 0
    audios, sidecars = _paths(capsys.readouterr().out)
    doc = json.loads(open(sidecars[-1]).read())
    assert doc["params"]["weights"]["model"] == str(tiny_tree) and doc["params"]["weights"]["digest"]
    assert doc["params"]["request"]["task"] == ("text2music" if command == "generate" else "cover")
    # the sidecar alone finds the model; `generate --from` replays any task
    assert main(["generate", "--from", sidecars[-1], "--device", "cpu", "--quiet", "--output-dir", str(tmp_path / "b")]) == 0
    again, _ = _paths(capsys.readouterr().out)
    assert len(again) == 1
    first, second = sf.read(audios[-1])[0], sf.read(again[0])[0]
    assert first.shape == second.shape and (first == second).all()


def test_from_toml(tiny_tree, tmp_path, capsys) -> None:
    toml = tmp_path / "song.toml"
    toml.write_text('caption = "lofi"\nduration = 10\nseed = 3\nsteps = 2\nkeyscale = "C Major"\n')
    assert main(["generate", "--model", str(tiny_tree), "--from", str(toml), "--device", "cpu", "--quiet",
                 "--output-dir", str(tmp_path)]) == 0
    _, sidecars = _paths(capsys.readouterr().out)
    params = json.loads(open(sidecars[0]).read())["params"]
    assert params["keyscale"] == "C major" and params["seed"] == 3 and params["sampler"]["steps"] == 2


def test_bad_values_reported_together_before_loading(tmp_path, capsys, monkeypatch) -> None:
    import songstep.pipeline as pipeline

    def boom(*args, **kwargs):
        raise AssertionError("nothing may load before the request is valid")

    monkeypatch.setattr(pipeline.Pipeline, "from_pretrained", boom)
    code = main(["generate", "--model", str(tmp_path / "missing"), "--caption", "lofi", "--duration", "5",
                 "--bpm", "999", "--key", "H", "--output-dir", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 3
    assert err[0].startswith("error: duration must be between 10 and 600") and "bpm" in err[1] and "keyscale" in err[2]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,message", [
    (["generate", "--device", "gpux", "--duration", "10"], "unknown device 'gpux'"),
    (["generate", "--device", "mps", "--duration", "10"], "MPS is not available"),
    (["extract", "--source", "x.wav", "--track", ","], "empty track name"),
    (["generate", "--duration", "10", "--lyrics-file", "nope.txt"], "--lyrics-file nope.txt: no such file"),
])
def test_one_line_errors_exit_2(argv, message, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    code = main([*argv, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_lyrics_file_not_utf8(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "l.txt").write_bytes(b"\xff\xfe\x00bad")
    assert main(["generate", "--duration", "10", "--lyrics-file", "l.txt", "--quiet"]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_name_never_overwrites(tiny_tree, tmp_path, capsys) -> None:
    args = ["generate", "--model", str(tiny_tree), "--device", "cpu", "--quiet", "--caption", "x", "--duration", "10",
            "--steps", "1", "--name", "song", "--output-dir", str(tmp_path)]
    assert main([*args, "--seed", "1"]) == 0 and main([*args, "--seed", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song-2.json", "song-2.wav", "song.json", "song.wav"]
    assert json.loads((tmp_path / "song.json").read_text())["params"]["seed"] == 1
    capsys.readouterr()
    assert main([*args, "--seed", "3", "--name", "../escape"]) == 2
    assert "plain file name" in capsys.readouterr().err

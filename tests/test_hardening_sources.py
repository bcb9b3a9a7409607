"""Sources (paths, file objects, tensors only; directories; truncated WAV; unknown-length FLAC;
clipping; repaint holes) and the CLI's one-line errors (devices, lyrics files, the last resort)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from songstep.audio import load_audio
from songstep.cli import main
from songstep.errors import InvalidAudio, InvalidRequest

SR = 48000


def _wave(seconds: float, level: float = 0.1) -> np.ndarray:
    return (level * np.random.default_rng(0).standard_normal((int(seconds * SR), 2))).astype(np.float32)


def _one_line(capsys) -> str:
    """The one error line (status lines, which come first unless --quiet, are not errors)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert all(line.startswith("songstep ") for line in err.splitlines() if not line.startswith("error:")), err
    return errors[0]


def _cli(tiny_tree, tmp_path, *args: str) -> list[str]:
    return [*args, "--model", str(tiny_tree), "--quiet", "--device", "cpu", "--steps", "1", "--output-dir", str(tmp_path / "out")]


def test_an_int_is_never_taken_as_a_file_descriptor(tiny_tree, tmp_path, source_wav) -> None:
    from songstep.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(str(tiny_tree), device="cpu", lm="none")
    with open(source_wav, "rb") as f:
        with pytest.raises(InvalidRequest, match="a path, a file object or a tensor, got int"):
            pipe.cover(f.fileno(), seed=1, steps=1)
        os.fstat(f.fileno())  # the caller's descriptor is still open
        assert f.tell() == 0  # and unread
        f.read(4)


def test_a_directory_is_named_as_one(tiny_tree, tmp_path, capsys) -> None:
    with pytest.raises(InvalidAudio, match="is a directory"):
        load_audio(tmp_path)
    assert main(_cli(tiny_tree, tmp_path, "cover", "--source", str(tmp_path))) == 2
    assert "is a directory" in _one_line(capsys)


def test_truncated_wav_is_refused_with_the_numbers(tiny_tree, tmp_path, capsys) -> None:
    sf.write(tmp_path / "full.wav", _wave(4.0), SR, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: 44 + len(data[44:]) // 2])
    with pytest.raises(InvalidAudio, match=r"truncated: its header declares 4\.00 s .* holds 2\.00 s"):
        load_audio(tmp_path / "cut.wav")
    assert main(_cli(tiny_tree, tmp_path, "cover", "--source", str(tmp_path / "cut.wav"))) == 2
    assert "truncated" in _one_line(capsys)
    assert load_audio(tmp_path / "full.wav").shape == (2, 4 * SR)  # a whole file is not


def _unknown_length_flac(path, seconds: float) -> np.ndarray:
    """A FLAC whose STREAMINFO total-samples field is 0 (unknown), as streaming encoders write."""
    wave = _wave(seconds)
    sf.write(path, wave, SR, subtype="PCM_16", format="FLAC")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    data[21] &= 0xF0  # the low 4 of the 36 total-samples bits …
    data[22:26] = b"\0\0\0\0"  # … and the other 32
    path.write_bytes(bytes(data))
    with sf.SoundFile(path) as f:
        assert f.frames > 2**62  # libsndfile: unknown
    return wave


def test_unknown_length_flac_is_read_in_blocks_within_the_limit(tmp_path) -> None:
    wave = _unknown_length_flac(tmp_path / "stream.flac", 3.5)
    loaded = load_audio(tmp_path / "stream.flac")
    assert loaded.shape == (2, int(3.5 * SR))
    expected = np.round(wave * 32768).clip(-32768, 32767) / 32768
    assert np.abs(loaded.numpy().T - expected).max() < 1e-6
    with pytest.raises(InvalidAudio, match=r"too long: more than 2 s .*stopped at 3\.0 s"):
        load_audio(tmp_path / "stream.flac", max_seconds=2)


def test_loud_float_sources_are_clipped_with_a_warning(tmp_path, caplog) -> None:
    sf.write(tmp_path / "loud.wav", _wave(1.0, level=3.0), SR, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="songstep.audio"):
        wave = load_audio(tmp_path / "loud.wav")
    assert float(wave.abs().max()) == 1.0
    assert any("above full scale" in r.getMessage() and "clipped" in r.getMessage() for r in caplog.records)
    caplog.clear()
    from songstep.pipeline.inputs import load_wave

    with caplog.at_level(logging.WARNING, logger="songstep.audio"):
        load_wave(torch.full((2, 100), 5.0))
    assert any("peak 5.00" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="songstep.audio"):
        load_wave(torch.full((2, 100), 0.5))
    assert not caplog.records


def test_a_repaint_window_after_the_source_is_refused(tiny_tree, tmp_path, source_wav, capsys) -> None:
    code = main(_cli(tiny_tree, tmp_path, "repaint", "--source", str(source_wav), "--start", "100", "--end", "200"))
    err = _one_line(capsys)
    assert code == 2 and "starts at 100 s, after the source's end (4.00 s)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device, words", [
    ("gpu", "unknown device 'gpu'"),
    pytest.param("cuda", "no CUDA GPU is usable", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")),
    pytest.param("mps", "MPS is not available", marks=pytest.mark.skipif(
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(), reason="has MPS")),
])
def test_device_errors_are_one_line_with_the_fix(tiny_tree, tmp_path, capsys, device, words) -> None:
    code = main(["generate", "--model", str(tiny_tree), "--duration", "10", "--device", device, "--output-dir", str(tmp_path)])
    err = _one_line(capsys)
    assert code == 2 and words in err and ("--device cpu" in err or "cuda:N" in err)


def test_lyrics_file_errors_exit_2(tiny_tree, tmp_path, capsys) -> None:
    (tmp_path / "latin1.txt").write_bytes("déjà vu".encode("latin-1"))
    base = ["generate", "--model", str(tiny_tree), "--duration", "10", "--device", "cpu", "--output-dir", str(tmp_path / "o")]
    assert main([*base, "--lyrics-file", str(tmp_path / "latin1.txt")]) == 2
    assert "not UTF-8 text (byte 0xe9 at offset 1)" in _one_line(capsys)
    assert main([*base, "--lyrics-file", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in _one_line(capsys)
    assert main([*base, "--lyrics-file", str(tmp_path)]) == 2
    assert "is a directory" in _one_line(capsys)


def test_the_last_resort_is_one_line_and_the_trace_with_v(monkeypatch, capsys) -> None:
    import songstep.cli as cli

    def broken(args):
        raise ZeroDivisionError("something\nnobody expected")

    monkeypatch.setattr(cli, "run_info", broken)
    assert main(["info"]) == 1
    err = _one_line(capsys)
    assert err == "error: unexpected ZeroDivisionError: something nobody expected (run with -v for the full trace)"
    assert main(["-v", "info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: unexpected")

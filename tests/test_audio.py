"""Tests of songstep.audio: loading, resampling, post-processing, atomic reproducible saving."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from songstep import audio as A
from songstep.errors import InvalidAudio, InvalidRequest

SR = 48_000
PARAMS = {
    "caption": "dreamy lo-fi hip hop with rain, 雨の夜 " + "and a very long tail " * 10,
    "lyrics": "[verse]\nla la la — ünïcödé\n" * 300,
    "seed": 1234,
    "model": "acestep-v15-turbo",
    "steps": 8,
    "guidance_scale": 7.0,
    "bpm": None,
    "tracks": ["vocals", "drums"],
}


def sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stereo_wave(seconds: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(np.stack([sine(440, seconds), sine(660, seconds, amp=0.3)]))


def dominant_freq(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("fmt", A.AUDIO_FORMATS)
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    wave = stereo_wave(1.0)
    path = A.save_audio(tmp_path / f"take.{fmt}", wave, SR, params=PARAMS)
    assert path == tmp_path / f"take.{fmt}"
    assert sf.info(path).samplerate == SR
    loaded = A.load_audio(path)
    assert loaded.dtype == torch.float32 and loaded.shape[0] == 2
    n = wave.shape[1]
    if fmt in ("wav", "flac"):
        assert loaded.shape == wave.shape
        torch.testing.assert_close(loaded, wave, atol=1.0 / 32768, rtol=0)
    else:
        assert abs(loaded.shape[1] - n) <= 2 * 1152  # at most two codec frames of padding
        m = min(n, loaded.shape[1])
        assert float((loaded[:, :m] - wave[:, :m]).abs().max()) < 0.1
        for ch, freq in enumerate((440, 660)):
            assert abs(dominant_freq(loaded[ch].numpy(), SR) - freq) < 2


def test_full_scale_does_not_wrap(tmp_path: Path) -> None:
    wave = torch.tensor([[1.0, -1.0, 1.5, -1.5, 0.25]] * 2)
    loaded = A.load_audio(A.save_audio(tmp_path / "edge.wav", wave))
    expected = torch.tensor([[32767 / 32768, -1.0, 32767 / 32768, -1.0, 0.25]] * 2)
    torch.testing.assert_close(loaded, expected, atol=0, rtol=0)


def test_mono_becomes_stereo(tmp_path: Path) -> None:
    path = tmp_path / "mono.flac"
    sf.write(path, sine(440, 0.5), SR)
    loaded = A.load_audio(path)
    assert loaded.shape == (2, SR // 2)
    torch.testing.assert_close(loaded[0], loaded[1])
    torch.testing.assert_close(loaded[0], torch.from_numpy(sine(440, 0.5)), atol=1 / 32768, rtol=0)


def test_mono_tensor_saves_as_mono(tmp_path: Path) -> None:
    path = A.save_audio(tmp_path / "m.wav", torch.from_numpy(sine(440, 0.1))[None])
    assert sf.info(path).channels == 1
    assert A.load_audio(path).shape == (2, 4800)


@pytest.mark.parametrize("sr", [44_100, 22_050])
def test_resample_keeps_frequency_and_length(tmp_path: Path, sr: int) -> None:
    path = tmp_path / f"s{sr}.wav"
    x = sine(1000, 2.0, sr=sr)
    sf.write(path, np.stack([x, x], 1), sr, subtype="FLOAT")
    loaded = A.load_audio(path)
    assert abs(loaded.shape[1] - len(x) * SR / sr) <= 1
    assert abs(dominant_freq(loaded[0].numpy(), SR) - 1000) < 1
    mid = loaded[0, SR // 2 : SR].numpy()  # away from the filter edges
    assert abs(np.sqrt(np.mean(mid**2)) - 0.5 / math.sqrt(2)) < 1e-3


def test_load_file_object_and_clamp(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    data = np.stack([sine(440, 0.2, amp=1.5), np.full(9600, np.nan, np.float32)], 1)
    data[1, 0] = np.inf  # frame 1, left channel
    sf.write(buffer, data, SR, format="WAV", subtype="FLOAT")
    buffer.seek(0)
    loaded = A.load_audio(buffer)
    assert loaded.shape == (2, 9600)
    assert float(loaded.abs().max()) == 1.0
    assert torch.isfinite(loaded).all() and float(loaded[1].abs().max()) == 0.0


def test_audio_duration(tmp_path: Path) -> None:
    path = tmp_path / "d.flac"
    sf.write(path, sine(440, 1.5, sr=22_050), 22_050)
    assert A.audio_duration(path) == pytest.approx(1.5)


# --------------------------------------------------------------------------------------------
# invalid input


def _write_garbage(path: Path) -> Path:
    path.write_bytes(os.urandom(64) + b"this is not audio" * 100)
    return path


def _write_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _write_frames(path: Path, frames: int, channels: int, sr: int = SR) -> Path:
    sf.write(path, np.zeros((frames, channels), np.float32), sr, subtype="PCM_16")
    return path


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda d: _write_garbage(d / "junk.wav"), {}, "cannot decode"),
        (lambda d: _write_garbage(d / "junk.mp3"), {}, "cannot decode"),
        (lambda d: _write_garbage(d / "junk"), {}, "cannot decode"),
        (lambda d: _write_empty(d / "empty.wav"), {}, "is empty"),
        (lambda d: _write_frames(d / "zero.wav", 0, 2), {}, "no audio samples"),
        (lambda d: _write_frames(d / "three.wav", 100, 3), {}, "has 3 channels; at most 2"),
        (
            lambda d: _write_frames(d / "long.wav", 2 * SR, 2),
            {"max_seconds": 1.0},
            "too long: 2.00 s (limit 1 s)",
        ),
        (
            lambda d: _write_frames(d / "long.flac", 3 * 8000, 1, 8000),
            {"max_seconds": 2.5},
            "too long: 3.00 s",
        ),
        (lambda d: _write_garbage(d / "song.m4a"), {}, "unsupported audio format '.m4a'"),
        (lambda d: d / "missing.wav", {}, "no such file"),
    ],
)
def test_invalid_audio(tmp_path: Path, make, kwargs, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InvalidAudio) as info:
        A.load_audio(path, **kwargs)
    assert message in str(info.value)
    assert path.name in str(info.value)


def test_invalid_all_nan(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    sf.write(path, np.full((100, 2), np.nan, np.float32), SR, subtype="FLOAT")
    with pytest.raises(InvalidAudio, match="no finite samples"):
        A.load_audio(path)


def test_invalid_streams() -> None:
    with pytest.raises(InvalidAudio, match="is empty"):
        A.load_audio(io.BytesIO())
    with pytest.raises(InvalidAudio, match="cannot decode the uploaded audio"):
        A.load_audio(io.BytesIO(b"\x00\x01garbage" * 50))


def test_default_limit_is_ten_minutes(tmp_path: Path) -> None:
    path = _write_frames(tmp_path / "long.wav", 601 * 8000, 1, 8000)
    with pytest.raises(InvalidAudio, match=r"601\.00 s \(limit 600 s\)"):
        A.load_audio(path)
    assert A.load_audio(path, max_seconds=None, target_sr=8000).shape == (2, 601 * 8000)


# --------------------------------------------------------------------------------------------
# tags, sidecar, reproducibility


@pytest.mark.parametrize("fmt", A.AUDIO_FORMATS)
def test_tags_round_trip(tmp_path: Path, fmt: str) -> None:
    import mutagen

    path = A.save_audio(tmp_path / "t", stereo_wave(0.3), fmt=fmt, params=PARAMS)
    assert path.name == f"t.{fmt}"
    assert A.read_tags(path) == PARAMS
    tags = mutagen.File(path).tags
    if fmt in ("wav", "mp3"):  # ID3v2
        title, software = tags["TIT2"].text[0], tags["TSSE"].text[0]
    else:  # Vorbis comments
        title, software = tags["TITLE"][0], tags["ENCODER"][0]
    assert title == PARAMS["caption"].strip()[: A.TITLE_MAX_CHARS] and len(title) == A.TITLE_MAX_CHARS
    assert software == "songstep"


def test_read_tags_without_params(tmp_path: Path) -> None:
    path = tmp_path / "plain.flac"
    sf.write(path, np.zeros((100, 2), np.float32), SR)
    assert A.read_tags(path) == {}
    with pytest.raises(InvalidAudio, match="cannot read tags"):
        A.read_tags(_write_garbage(tmp_path / "x.bin"))


@pytest.mark.parametrize("fmt", A.AUDIO_FORMATS)
def test_identical_inputs_give_identical_bytes(tmp_path: Path, fmt: str) -> None:
    wave = stereo_wave(0.5)
    first = A.save_audio(tmp_path / "a" / "take", wave, fmt=fmt, params=PARAMS).read_bytes()
    second = A.save_audio(tmp_path / "b" / "take", wave.clone(), fmt=fmt, params=dict(PARAMS)).read_bytes()
    assert first == second
    other = A.save_audio(tmp_path / "c" / "take", wave, fmt=fmt, params={**PARAMS, "seed": 5}).read_bytes()
    assert other != first


def test_sidecar(tmp_path: Path) -> None:
    audio_path = A.save_audio(tmp_path / "take.mp3", stereo_wave(0.2), params=PARAMS)
    timings = {"lm_s": 1.25, "dit_s": 0.5}
    sidecar = A.write_sidecar(audio_path, PARAMS, timings)
    assert sidecar == tmp_path / "take.json"
    doc = json.loads(sidecar.read_text(encoding="utf-8"))
    assert doc == {"params": PARAMS, "software": "songstep", "timings": timings}
    assert "雨" in sidecar.read_text(encoding="utf-8")  # UTF-8, not escaped
    assert "lm_s" not in json.dumps(A.read_tags(audio_path))


def test_params_json_types(tmp_path: Path) -> None:
    params = {"path": Path("ref.wav"), "seed": np.int64(3), "scale": torch.tensor(0.5), "tags": {"b", "a"}}
    path = A.save_audio(tmp_path / "p.flac", stereo_wave(0.1), params=params)
    assert A.read_tags(path) == {"path": "ref.wav", "seed": 3, "scale": 0.5, "tags": ["a", "b"]}
    with pytest.raises(InvalidRequest, match="object is not JSON-serialisable"):
        A.save_audio(tmp_path / "q.flac", stereo_wave(0.1), params={"x": object()})
    assert files_in(tmp_path) == ["p.flac"]


def test_output_format_choice(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="supported: wav, flac, mp3, ogg"):
        A.save_audio(tmp_path / "x.aac", stereo_wave(0.1))
    with pytest.raises(InvalidRequest, match="'opus'"):
        A.save_audio(tmp_path / "x.wav", stereo_wave(0.1), fmt="opus")
    with pytest.raises(InvalidRequest, match="mp3_bitrate"):
        A.save_audio(tmp_path / "x.mp3", stereo_wave(0.1), mp3_bitrate=100)
    assert A.save_audio(tmp_path / "x.wav", stereo_wave(0.1), fmt="FLAC").name == "x.wav.flac"
    with pytest.raises(InvalidAudio, match="1 or 2 channels"):
        A.save_audio(tmp_path / "y.wav", torch.zeros(3, 10))


@pytest.mark.parametrize("bitrate", A.MP3_BITRATES)
def test_mp3_constant_bitrate(tmp_path: Path, bitrate: int) -> None:
    from mutagen.mp3 import MP3, BitrateMode

    path = A.save_audio(tmp_path / "b.mp3", stereo_wave(1.0), mp3_bitrate=bitrate)
    info = MP3(path).info
    assert info.bitrate == bitrate * 1000 and info.bitrate_mode == BitrateMode.CBR
    assert info.sample_rate == SR


def _reference_ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_ogg_crc_and_serial(tmp_path: Path) -> None:
    for sample in (b"", b"OggS", bytes(range(256)) * 3):
        assert A._ogg_crc(sample) == _reference_ogg_crc(sample)
    data = A.save_audio(tmp_path / "o.ogg", stereo_wave(0.5), params=PARAMS).read_bytes()
    pos, serials = 0, set()
    while pos < len(data):
        segments = data[pos + 26]
        end = pos + 27 + segments + sum(data[pos + 27 : pos + 27 + segments])
        page = bytearray(data[pos:end])
        stored = int.from_bytes(page[22:26], "little")
        page[22:26] = bytes(4)
        assert stored == _reference_ogg_crc(bytes(page))
        serials.add(int.from_bytes(page[14:18], "little"))
        pos = end
    assert len(serials) == 1


# --------------------------------------------------------------------------------------------
# atomic writes


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
@pytest.mark.parametrize("fmt", A.AUDIO_FORMATS)
def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch, fmt: str, error: type) -> None:
    def broken_encode(tmp: Path, *args) -> None:
        tmp.write_bytes(b"RIFF half a file")
        raise error("interrupted")

    monkeypatch.setattr(A, "_encode", broken_encode)
    with pytest.raises(error):
        A.save_audio(tmp_path / f"take.{fmt}", stereo_wave(0.1), params=PARAMS)
    assert files_in(tmp_path) == []


def test_failed_tagging_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = A.save_audio(tmp_path / "take.flac", stereo_wave(0.1), params=PARAMS)
    before = path.read_bytes()

    def broken_tags(*args) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(A, "_write_tags", broken_tags)
    with pytest.raises(KeyboardInterrupt):
        A.save_audio(path, stereo_wave(0.2), params={"seed": 1})
    assert files_in(tmp_path) == ["take.flac"]
    assert path.read_bytes() == before


def test_failed_sidecar_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        A.write_sidecar(tmp_path / "take.wav", {"x": object()}, {})
    assert files_in(tmp_path) == []


def test_output_respects_umask(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        path = A.save_audio(tmp_path / "u.wav", stereo_wave(0.1))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------------------------
# post-processing


def test_anti_clip() -> None:
    loud = torch.tensor([[2.0, -1.0], [0.5, 1.0]])
    torch.testing.assert_close(A.anti_clip(loud), loud / 2)
    quiet = torch.tensor([[0.5, -0.25], [0.1, 0.0]])
    torch.testing.assert_close(A.anti_clip(quiet), quiet)
    batch = torch.stack([loud, quiet, -4 * quiet])
    out = A.anti_clip(batch)
    torch.testing.assert_close(out[0], loud / 2)
    torch.testing.assert_close(out[1], quiet)
    torch.testing.assert_close(out[2], -4 * quiet / 2)


def test_peak_normalize() -> None:
    target = 10 ** (-1 / 20)  # 0.8913 = -1 dBFS
    wave = torch.tensor([[0.5, -0.25], [0.1, 0.0]])
    out = A.peak_normalize(wave)
    assert float(out.abs().max()) == pytest.approx(target, abs=1e-6)
    torch.testing.assert_close(out, wave * (target / 0.5))
    assert float(A.peak_normalize(wave, db=-6.0).abs().max()) == pytest.approx(0.501187, abs=1e-6)
    silent = torch.full((2, 2), 5e-7)
    torch.testing.assert_close(A.peak_normalize(silent), silent)
    batch = A.peak_normalize(torch.stack([wave, 3 * wave, silent]))
    assert batch[:2].abs().amax(dim=(1, 2)).tolist() == pytest.approx([target, target], abs=1e-6)
    torch.testing.assert_close(batch[2], silent)


def test_pad_or_trim_and_silence() -> None:
    wave = torch.ones(2, 5)
    assert A.pad_or_trim(wave, 3).shape == (2, 3)
    padded = A.pad_or_trim(wave, 8)
    assert padded.shape == (2, 8) and float(padded[:, 5:].abs().sum()) == 0.0
    assert A.pad_or_trim(torch.ones(3, 2, 5), 7).shape == (3, 2, 7)
    assert A.is_silent(torch.zeros(2, 10)) and A.is_silent(torch.full((2, 3), 1e-6))
    assert not A.is_silent(torch.full((2, 3), 2e-6))
    assert A.is_silent(torch.full((2, 3), 5e-6), threshold=1e-5)


def test_loudness_normalize() -> None:
    pyloudnorm = pytest.importorskip("pyloudnorm")
    meter = pyloudnorm.Meter(SR)
    wave = stereo_wave(3.0) * 0.1
    out = A.loudness_normalize(wave, -18.0)
    assert meter.integrated_loudness(out.T.double().numpy()) == pytest.approx(-18.0, abs=0.05)
    batch = A.loudness_normalize(torch.stack([wave, wave * 0.5, torch.zeros_like(wave)]), -20.0)
    for item in batch[:2]:
        assert meter.integrated_loudness(item.T.double().numpy()) == pytest.approx(-20.0, abs=0.05)
    assert float(batch[2].abs().max()) == 0.0
    loud = A.loudness_normalize(wave, 0.0)  # would need a gain far above 0 dBFS
    assert float(loud.abs().max()) == pytest.approx(1.0, abs=1e-6)
    short = torch.full((2, 1000), 0.1)
    torch.testing.assert_close(A.loudness_normalize(short, -14.0), short)

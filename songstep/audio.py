"""Audio I/O and post-processing: load / resample / pad, anti-clip and
normalisation, and atomic, byte-reproducible writing of wav, flac, mp3 and ogg files carrying the
generation parameters in their tags.

Conventions: waveforms are float32 torch tensors, channels first (`[2, samples]`, or
`[batch, 2, samples]` where a function says "per item"), values in [-1, 1], 48 kHz.

Decoding and encoding use libsndfile (through `soundfile`); resampling uses soxr (HQ) where
upstream used torchaudio's sinc `Resample`; tags are written and read with mutagen so that
UTF-8 text and long lyrics survive in every format (libsndfile drops long WAV INFO strings and
writes MP3 ID3 text as Latin-1).

Reproducibility: the same waveform and parameters give byte-identical files for a given set of
codec libraries. Nothing time-dependent goes into a file (timings belong in the JSON sidecar).
One encoder needs help: libsndfile seeds each Ogg stream's serial number from the clock, so
ogg output gets its serial replaced by one derived from the audio and the parameters, and every
page's CRC is recomputed (`_set_ogg_serial`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import struct
import zlib
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr
import torch

from songstep.constants import AUDIO_CHANNELS, MAX_DURATION, SAMPLE_RATE
from songstep.errors import InvalidAudio, InvalidRequest

logger = logging.getLogger(__name__)

AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg")
"""Formats `save_audio` writes."""

READABLE_EXTENSIONS = ("wav", "wave", "flac", "mp3", "ogg", "oga", "opus", "aif", "aiff")
"""Path suffixes `load_audio` accepts (a path without a suffix, or a file object, is sniffed)."""

MP3_BITRATES = (128, 192, 256, 320)
"""Constant bit rates (kb/s) offered for mp3, as upstream; 128 is upstream's default."""

BIT_DEPTHS = {"wav": (16, 24, 32), "flac": (16, 24)}
"""Sample formats per container: 16/24-bit PCM, 32 = 32-bit float (WAV only; FLAC has no float)."""

SOFTWARE = "songstep"
TITLE_MAX_CHARS = 100
SILENCE_PEAK = 1e-6  # below this peak, peak normalisation is skipped (upstream)

_SUBTYPES = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
}

AudioSource = str | os.PathLike | BinaryIO


# --------------------------------------------------------------------------------------------
# loading


def load_audio(
    source: AudioSource,
    *,
    max_seconds: float | None = MAX_DURATION,
    target_sr: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Decode `source` (a path or a binary file object) to float32 `[2, samples]` at `target_sr`.

    Mono is duplicated to stereo, other rates are resampled with soxr (HQ), values are clamped to
    [-1, 1] (with a warning when the peak was above full scale) and isolated NaN/inf samples are
    zeroed. A file whose header leaves the length open (streamed FLAC) is decoded in blocks with
    the limit enforced while reading. Raises `InvalidAudio` naming the file and the reason:
    missing, a directory, empty, unsupported suffix, undecodable, truncated (the header declares
    more audio than the file holds), no samples, all non-finite, more than two channels, or longer
    than `max_seconds` (None: no limit). `InvalidRequest` for a source that is not a path or a
    binary file object (an int is never taken as a file descriptor).
    """
    name = _source_name(source)
    _check_source(source, name)
    try:
        with sf.SoundFile(source) as f:
            _check_header(f, name, max_seconds)
            rate = f.samplerate
            if f.frames >= UNKNOWN_LENGTH:
                data = _read_blocks(f, name, max_seconds)
            else:
                _check_truncated(f, name)
                data = f.read(dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError) as exc:
        raise InvalidAudio(f"cannot decode {name}: {_reason(exc)}") from exc
    if data.shape[0] == 0:
        raise InvalidAudio(f"{name} contains no audio samples")
    _check_length(data.shape[0] / rate, name, max_seconds)
    data = _finite(data, name)
    if data.shape[1] == 1:
        data = np.repeat(data, AUDIO_CHANNELS, axis=1)
    if rate != target_sr:
        logger.debug("resampling %s from %d Hz to %d Hz", name, rate, target_sr)
        data = soxr.resample(data, rate, target_sr, quality="HQ")
    warn_clipping(data, name)
    np.clip(data, -1.0, 1.0, out=data)
    return torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32))


UNKNOWN_LENGTH = 1 << 62  # libsndfile reports 2**63 - 1 frames when a header leaves the length open
CLIP_WARN_PEAK = 1.001  # a peak above this (about +0.01 dBFS) is reported when clipped


def warn_clipping(data: np.ndarray | torch.Tensor, name: str) -> None:
    """Log a warning when a source's peak is above full scale (it is about to be clipped)."""
    size = data.numel() if isinstance(data, torch.Tensor) else data.size
    peak = float(abs(data).max()) if size else 0.0
    if peak > CLIP_WARN_PEAK:
        over = int((abs(data) > 1.0).sum())
        logger.warning("%s: peak %.2f (%+.1f dBFS) is above full scale; %d samples clipped to ±1 "
                       "(scale the source down to keep them)", name, peak, 20 * np.log10(peak), over)


def _read_blocks(f: sf.SoundFile, name: str, max_seconds: float | None) -> np.ndarray:
    """Decode a file of unknown length one second at a time, stopping as soon as it passes the
    limit. (soundfile's `read` seeks after each block, which such streams refuse, so blocks are
    read with libsndfile's `sf_readf_float` directly.)"""
    from soundfile import _ffi, _snd

    block, chunks, total = f.samplerate, [], 0
    limit = None if max_seconds is None else int(max_seconds * f.samplerate)
    while True:
        buf = np.empty((block, f.channels), dtype=np.float32)
        n = int(_snd.sf_readf_float(f._file, _ffi.cast("float *", buf.ctypes.data), block))
        if n <= 0:
            break
        chunks.append(buf[:n])
        total += n
        if limit is not None and total > limit:
            raise InvalidAudio(f"{name} is too long: more than {max_seconds:g} s (its header gives no "
                               f"length; reading stopped at {total / f.samplerate:.1f} s)")
    return np.concatenate(chunks) if chunks else np.empty((0, f.channels), np.float32)


def _check_truncated(f: sf.SoundFile, name: str) -> None:
    """`InvalidAudio` when the header's data size exceeds what the file holds (libsndfile reads
    what is there and reports `data : N (should be M)`)."""
    match = re.search(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", f.extra_info or "", re.MULTILINE)
    if not match:
        return
    declared, present = int(match.group(1)), int(match.group(2))
    if declared > present > 0 and f.frames > 0:
        seconds = f.frames / f.samplerate
        raise InvalidAudio(f"{name} is truncated: its header declares {seconds * declared / present:.2f} s of audio "
                           f"({declared} bytes) but the file holds {seconds:.2f} s ({present} bytes)")


def audio_duration(source: AudioSource) -> float:
    """Length of an audio file in seconds, from its header (no full decode)."""
    name = _source_name(source)
    _check_source(source, name)
    try:
        with sf.SoundFile(source) as f:
            return f.frames / f.samplerate
    except (sf.SoundFileError, RuntimeError, TypeError) as exc:
        raise InvalidAudio(f"cannot decode {name}: {_reason(exc)}") from exc


def _source_name(source: AudioSource) -> str:
    if isinstance(source, str | os.PathLike):
        return f"'{os.fspath(source)}'"
    name = getattr(source, "name", None)
    return f"'{name}'" if isinstance(name, str) else "the uploaded audio"


def _check_source(source: AudioSource, name: str) -> None:
    """Fail early, with a precise reason, on what libsndfile would call 'unknown format'."""
    if not isinstance(source, str | os.PathLike) and not callable(getattr(source, "read", None)):
        raise InvalidRequest(f"an audio source must be a path, a binary file object or a tensor, "
                             f"not {type(source).__name__}")
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            raise InvalidAudio(f"{name} is a directory, not an audio file")
        if not path.is_file():
            raise InvalidAudio(f"{name}: no such file")
        suffix = path.suffix.lower().lstrip(".")
        if suffix and suffix not in READABLE_EXTENSIONS:
            raise InvalidAudio(
                f"{name}: unsupported audio format '.{suffix}' (readable: {', '.join(READABLE_EXTENSIONS)})"
            )
        if path.stat().st_size == 0:
            raise InvalidAudio(f"{name} is empty (0 bytes)")
    elif hasattr(source, "seekable") and source.seekable():
        start = source.tell()
        size = source.seek(0, os.SEEK_END) - start
        source.seek(start)
        if size <= 0:
            raise InvalidAudio(f"{name} is empty (0 bytes)")


def _check_header(f: sf.SoundFile, name: str, max_seconds: float | None) -> None:
    if f.channels > AUDIO_CHANNELS:
        raise InvalidAudio(f"{name} has {f.channels} channels; at most {AUDIO_CHANNELS} are supported")
    if f.samplerate <= 0:
        raise InvalidAudio(f"{name} has an invalid sample rate {f.samplerate}")
    if 0 < f.frames < UNKNOWN_LENGTH:
        _check_length(f.frames / f.samplerate, name, max_seconds)


def _check_length(seconds: float, name: str, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise InvalidAudio(f"{name} is too long: {seconds:.2f} s (limit {max_seconds:g} s)")


def _finite(data: np.ndarray, name: str) -> np.ndarray:
    finite = np.isfinite(data)
    if finite.all():
        return data
    if not finite.any():
        raise InvalidAudio(f"{name} contains no finite samples (all NaN or infinite)")
    logger.warning("%s: %d non-finite samples replaced", name, int((~finite).sum()))
    return np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=-1.0)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
    return text.strip().rstrip(".")


# --------------------------------------------------------------------------------------------
# waveform helpers


def is_silent(wave: torch.Tensor, threshold: float = SILENCE_PEAK) -> bool:
    """True when no sample's magnitude exceeds `threshold` (so the RMS does not either).

    Upstream's reference-audio check uses 1e-6 (the default); its output check uses 1e-5.
    """
    return wave.numel() == 0 or bool(wave.abs().max() <= threshold)


def pad_or_trim(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """Zero-pad at the end or cut the last axis to exactly `samples`."""
    if samples < 0:
        raise InvalidRequest(f"samples must be >= 0, got {samples}")
    length = wave.shape[-1]
    if length >= samples:
        return wave[..., :samples]
    return torch.nn.functional.pad(wave, (0, samples - length))


def _peaks(wave: torch.Tensor) -> torch.Tensor:
    """Per-item peak, broadcastable to `wave`: one item for ndim <= 2, else per leading index."""
    if wave.ndim <= 2:
        return wave.abs().amax().reshape([1] * wave.ndim)
    return wave.abs().amax(dim=tuple(range(1, wave.ndim)), keepdim=True)


def anti_clip(wave: torch.Tensor) -> torch.Tensor:
    """Per item, divide by the peak when it exceeds 1.0 (upstream's post-decode step)."""
    if wave.numel() == 0:
        return wave
    return wave / _peaks(wave).clamp(min=1.0)


def peak_normalize(wave: torch.Tensor, db: float = -1.0) -> torch.Tensor:
    """Per item, scale so the peak is `db` dBFS (gain 10^(db/20)/peak); items whose peak is
    below 1e-6 are left unchanged."""
    if wave.numel() == 0:
        return wave
    peak = _peaks(wave)
    target = 10.0 ** (db / 20.0)
    gain = torch.where(peak >= SILENCE_PEAK, target / peak.clamp(min=SILENCE_PEAK), torch.ones_like(peak))
    return wave * gain


LOUDNESS_RANGE = (-70.0, 0.0)  # LUFS a loudness target may ask for


def check_loudness_target(lufs: float) -> None:
    """Raise `InvalidRequest` for a target outside −70…0 LUFS or without `pyloudnorm`, before
    any work is done."""
    low, high = LOUDNESS_RANGE
    if not isinstance(lufs, int | float) or not low <= float(lufs) <= high:
        raise InvalidRequest(f"loudness target must be between {low:g} and {high:g} LUFS (e.g. -14), got {lufs!r}")
    _pyloudnorm()


def _pyloudnorm():
    try:
        import pyloudnorm
    except ImportError as exc:
        raise InvalidRequest(
            "a loudness target needs the optional package pyloudnorm: pip install 'songstep[loudness]'"
        ) from exc
    return pyloudnorm


def loudness_normalize(wave: torch.Tensor, lufs: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Per item, scale to an integrated loudness of `lufs` (ITU-R BS.1770 via pyloudnorm).

    Items that are silent or shorter than one 400 ms gating block are left unchanged. Peaks are
    then limited to 1.0 (`anti_clip`), so a loud target may be missed; that is logged. Needs the
    optional `pyloudnorm` package (`pip install songstep[loudness]`).
    """
    meter = _pyloudnorm().Meter(sample_rate)
    items = wave.unsqueeze(0) if wave.ndim <= 2 else wave
    gains = []
    for item in items:
        data = item.reshape(-1, item.shape[-1]).T.double().cpu().numpy()
        loudness = meter.integrated_loudness(data) if data.shape[0] > sample_rate * 0.4 else -np.inf
        if not np.isfinite(loudness):
            logger.warning("loudness target skipped: item is silent or shorter than 400 ms")
            gains.append(1.0)
        else:
            gains.append(10.0 ** ((lufs - loudness) / 20.0))
    gain = torch.tensor(gains, dtype=wave.dtype, device=wave.device).reshape([-1] + [1] * (items.ndim - 1))
    out = items * gain
    if bool((_peaks(out) > 1.0).any()):
        logger.warning("loudness target %.1f LUFS would clip; peaks limited to 0 dBFS", lufs)
        out = anti_clip(out)
    return out[0] if wave.ndim <= 2 else out


# --------------------------------------------------------------------------------------------
# saving


def save_audio(
    path: str | os.PathLike,
    wave: torch.Tensor | np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    fmt: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    mp3_bitrate: int = 128,
    bit_depth: int = 16,
) -> Path:
    """Write `wave` (`[channels, samples]`, 1 or 2 channels) atomically and return the path.

    `fmt` is one of `AUDIO_FORMATS`; by default it is taken from the path's suffix, and a given
    `fmt` replaces a different suffix. wav and flac are 16-bit PCM (x·32768, rounded, clipped)
    or `bit_depth` 24 (PCM, rounded the same way) or 32 (float, wav only),
    mp3 is constant-bit-rate LAME (`mp3_bitrate` kb/s, one of `MP3_BITRATES`), ogg is Vorbis
    (libsndfile's default quality). Values are clamped to [-1, 1] first.

    `params` (the generation parameters: caption, lyrics, seed, model, steps, ...) are stored in
    the tags: `comment` = compact sorted-key JSON of `params`, `title` = the caption cut to 100
    characters, software/encoder = "songstep", and the tempo and key where DAWs read them (ID3
    `TBPM`/`TKEY`, Vorbis `BPM`/`KEY`; the key as "Am", "F#", "Bb"). Use `read_tags` to get them back. Do not put
    timings in `params` (they would make the bytes differ between runs); use `write_sidecar`.

    The file is written to a temporary file in the same directory, fsynced, then renamed over
    `path`, so an error or Ctrl-C never leaves a partial output (nor the temporary file).
    """
    fmt, target = _resolve_format(Path(path), fmt)
    write = audio_writer(wave, sample_rate, fmt, params=params, mp3_bitrate=mp3_bitrate, bit_depth=bit_depth)
    _atomic_write(target, write)
    logger.debug("wrote %s (%d Hz, %s)", target, sample_rate, fmt)
    return target


def audio_writer(
    wave: torch.Tensor | np.ndarray,
    sample_rate: int,
    fmt: str,
    *,
    params: Mapping[str, Any] | None = None,
    mp3_bitrate: int = 128,
    bit_depth: int = 16,
) -> Callable[[Path], None]:
    """Check and convert `wave` now; return `write(path)` that encodes it with its tags into an
    existing (empty) file, as `save_audio` does, but in place (the caller renames it)."""
    if fmt not in AUDIO_FORMATS:
        raise InvalidRequest(f"unsupported output format {fmt!r} (supported: {', '.join(AUDIO_FORMATS)})")
    if mp3_bitrate not in MP3_BITRATES:
        raise InvalidRequest(f"mp3_bitrate must be one of {MP3_BITRATES}, got {mp3_bitrate}")
    if bit_depth != 16 and bit_depth not in BIT_DEPTHS.get(fmt, ()):
        raise InvalidRequest(f"bit depth {bit_depth} is not available for {fmt}: "
                             + ", ".join(f"{k} takes {'/'.join(map(str, v))}" for k, v in BIT_DEPTHS.items()))
    data = _to_interleaved(wave)
    comment = _params_json(params or {})
    tags = _tag_values(params or {}, comment)

    def write(tmp: Path) -> None:
        _encode(tmp, data, sample_rate, fmt, mp3_bitrate, bit_depth)
        _write_tags(tmp, fmt, tags)
        if fmt == "ogg":
            _set_ogg_serial(tmp, zlib.crc32(comment.encode(), zlib.crc32(data.tobytes())))

    return write


def sidecar_text(params: Mapping[str, Any], timings: Mapping[str, Any] | None = None) -> str:
    """The JSON text of a sidecar (see `write_sidecar`)."""
    doc = {"params": dict(params), "software": SOFTWARE, "timings": dict(timings or {})}
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, default=_json_default) + "\n"


def write_sidecar(
    audio_path: str | os.PathLike,
    params: Mapping[str, Any],
    timings: Mapping[str, Any] | None = None,
) -> Path:
    """Write `<audio name>.json` beside the audio file (atomically) and return its path.

    Content: `{"params": {...}, "software": "songstep", "timings": {...}}`, sorted keys, UTF-8,
    indented. The sidecar is the place for run-dependent facts such as timings.
    """
    target = Path(audio_path).with_suffix(".json")
    text = sidecar_text(params, timings)
    _atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return target


def read_tags(path: str | os.PathLike) -> dict[str, Any]:
    """The generation parameters stored by `save_audio` in an audio file's tags.

    Returns `{}` for a readable file without songstep parameters; raises `InvalidAudio` when the
    file is missing or its format is not one mutagen recognises.
    """
    import mutagen

    name = f"'{os.fspath(path)}'"
    try:
        audio = mutagen.File(os.fspath(path))
    except (mutagen.MutagenError, OSError) as exc:
        raise InvalidAudio(f"cannot read tags of {name}: {_reason(exc)}") from exc
    if audio is None:
        raise InvalidAudio(f"cannot read tags of {name}: unknown format")
    for text in _comments(audio.tags):
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _resolve_format(path: Path, fmt: str | None) -> tuple[str, Path]:
    suffix = path.suffix.lower().lstrip(".")
    chosen = (fmt or suffix).lower().lstrip(".")
    if chosen not in AUDIO_FORMATS:
        raise InvalidRequest(
            f"unsupported output format '{fmt or path.suffix or path.name}' "
            f"(supported: {', '.join(AUDIO_FORMATS)})"
        )
    target = path if suffix == chosen else path.with_name(path.name + "." + chosen)
    return chosen, target


def _to_interleaved(wave: torch.Tensor | np.ndarray) -> np.ndarray:
    """`[channels, samples]` → C-contiguous float32 `[samples, channels]`, finite, in [-1, 1]."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float32).numpy()
    data = np.asarray(wave, dtype=np.float32)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[0] not in (1, 2):
        raise InvalidAudio(f"expected a [channels, samples] waveform with 1 or 2 channels, got {data.shape}")
    if data.shape[1] == 0:
        raise InvalidAudio("refusing to write a waveform with no samples")
    data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(np.clip(data, -1.0, 1.0).T)


def _encode(tmp: Path, data: np.ndarray, sample_rate: int, fmt: str, mp3_bitrate: int, bit_depth: int = 16) -> None:
    """Encode interleaved float32 `data` into `tmp` (no tags)."""
    container, subtype = _SUBTYPES[fmt]
    extra: dict[str, Any] = {}
    if subtype == "PCM_16" and bit_depth == 32:
        subtype = "FLOAT"  # already clipped to [-1, 1]
    elif subtype == "PCM_16" and bit_depth == 24:
        # 24-bit values in the high bytes of int32 (libsndfile keeps the top 24 bits), own rounding
        subtype, full = "PCM_24", 8388608.0
        data = (np.clip(np.rint(data.astype(np.float64) * full), -full, full - 1).astype(np.int32) << 8)
    elif subtype == "PCM_16":
        # Own rounding: libsndfile's float→int conversion without clipping wraps at +1.0.
        data = np.clip(np.rint(data * 32768.0), -32768, 32767).astype(np.int16)
    elif fmt == "mp3":
        # libsndfile maps compression level c to a constant bit rate of 320 − 288·c kb/s.
        extra = {"bitrate_mode": "CONSTANT", "compression_level": (320 - mp3_bitrate) / 288}
    sf.write(tmp, data, sample_rate, subtype, format=container, **extra)


# --------------------------------------------------------------------------------------------
# tags


def _params_json(params: Mapping[str, Any]) -> str:
    try:
        return json.dumps(
            dict(params), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"generation parameters cannot be stored as JSON: {exc}") from exc


def _json_default(value: Any) -> Any:
    """JSON for the few non-JSON types parameters carry; anything else is an error (never
    `str()`, whose output may hold memory addresses and break byte reproducibility)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, np.generic | np.ndarray | torch.Tensor) and np.ndim(value) == 0:
        return value.item()
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable")


def _tag_values(params: Mapping[str, Any], comment: str) -> dict[str, str]:
    tags = {"comment": comment, "software": SOFTWARE}
    caption = params.get("caption")
    if isinstance(caption, str) and caption.strip():
        tags["title"] = caption.strip()[:TITLE_MAX_CHARS]
    bpm = params.get("bpm")
    if isinstance(bpm, int | float) and not isinstance(bpm, bool) and bpm > 0:
        tags["bpm"] = str(round(bpm))
    key = daw_key(params.get("keyscale"))
    if key:
        tags["key"] = key
    return tags


def daw_key(keyscale: Any) -> str | None:
    """"A minor" → "Am", "F# major" → "F#" (the ID3 TKEY / Vorbis KEY notation); None if unknown."""
    if not isinstance(keyscale, str) or not keyscale.strip():
        return None
    parts = keyscale.split()
    if len(parts) != 2 or parts[1].lower() not in ("major", "minor"):
        return None
    note = parts[0][:1].upper() + parts[0][1:].replace("♯", "#").replace("♭", "b")
    return note + ("m" if parts[1].lower() == "minor" else "")


def _write_tags(tmp: Path, fmt: str, tags: Mapping[str, str]) -> None:
    """Add the tags to an encoded file with mutagen: ID3v2.4 (UTF-8) for mp3 and wav (an
    `id3 ` chunk), Vorbis comments (TITLE, COMMENT, ENCODER, BPM, KEY) for flac and ogg."""
    from mutagen import flac, mp3, oggvorbis, wave

    opener = {"wav": wave.WAVE, "flac": flac.FLAC, "mp3": mp3.MP3, "ogg": oggvorbis.OggVorbis}[fmt]
    audio = opener(os.fspath(tmp))
    if fmt in ("wav", "mp3"):
        _set_id3(audio, tags)
        if fmt == "mp3":
            audio.save(v1=0)  # ID3v2 only; no ID3v1 trailer
        else:
            audio.save()
        return
    if audio.tags is None:
        audio.add_tags()
    audio.tags.clear()
    for key, vorbis_key in (("title", "TITLE"), ("comment", "COMMENT"), ("software", "ENCODER"),
                            ("bpm", "BPM"), ("key", "KEY")):
        if key in tags:
            audio.tags[vorbis_key] = [tags[key]]
    audio.save()


def _set_id3(audio: Any, tags: Mapping[str, str]) -> None:
    from mutagen import id3

    if audio.tags is None:
        audio.add_tags()
    audio.tags.clear()
    utf8 = id3.Encoding.UTF8
    if "title" in tags:
        audio.tags.add(id3.TIT2(encoding=utf8, text=[tags["title"]]))
    audio.tags.add(id3.COMM(encoding=utf8, lang="eng", desc="", text=[tags["comment"]]))
    audio.tags.add(id3.TSSE(encoding=utf8, text=[tags["software"]]))
    if "bpm" in tags:
        audio.tags.add(id3.TBPM(encoding=utf8, text=[tags["bpm"]]))
    if "key" in tags:
        audio.tags.add(id3.TKEY(encoding=utf8, text=[tags["key"]]))


def _comments(tags: Any) -> list[str]:
    """Comment texts of ID3 (COMM frames) or Vorbis-comment tags."""
    if tags is None:
        return []
    if hasattr(tags, "getall"):
        return [text for frame in tags.getall("COMM") for text in frame.text]
    return [value for key, value in tags if key.lower() in ("comment", "description")]


# --------------------------------------------------------------------------------------------
# files


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a fresh temporary file beside `target`, fsync it, rename it over
    `target`. On any exception (KeyboardInterrupt included) the temporary file is removed and
    `target` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_part(target)
    try:
        write(tmp)
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def create_part(target: Path) -> Path:
    """Create an empty, unique, hidden file next to `target` (mode 0666 minus the umask):
    `.<name>.<pid>-<random>.part`; the process id lets a later run tell a stale one (its writer
    is gone) from one being written (`songstep.outputs.clean_stale`)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {target}")


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable where the platform allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Ogg serial numbers

_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _ogg_crc(page: bytes) -> int:
    """Ogg's page CRC: CRC-32, polynomial 0x04C11DB7, MSB first, initial 0, no final xor.

    zlib computes the bit-reflected CRC with the same polynomial, so it is fed bit-reversed
    bytes (with its init/final xor cancelled) and its result is bit-reversed back."""
    reflected = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def _set_ogg_serial(path: Path, serial: int) -> None:
    """Give every page of a single-stream Ogg file the serial number `serial` and fix its CRC."""
    data = bytearray(path.read_bytes())
    pos = 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS" or pos + 27 > len(data):
            raise InvalidAudio(f"'{path}': malformed Ogg page at byte {pos}")
        segments = data[pos + 26]
        end = pos + 27 + segments + sum(data[pos + 27 : pos + 27 + segments])
        struct.pack_into("<I", data, pos + 14, serial & 0xFFFFFFFF)
        struct.pack_into("<I", data, pos + 22, 0)
        struct.pack_into("<I", data, pos + 22, _ogg_crc(bytes(data[pos:end])))
        pos = end
    path.write_bytes(bytes(data))

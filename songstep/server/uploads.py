"""Uploaded audio: size-limited writes under `<data dir>/uploads/<job id>/`, then a full decode
(format, channels, length) before a job may use it."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import soundfile as sf

from songstep import audio
from songstep.errors import InvalidAudio, InvalidRequest
from songstep.server.settings import ServerSettings

_CHUNK = 1 << 20
_EXT = {"WAV": "wav", "FLAC": "flac", "MP3": "mp3", "OGG": "ogg", "AIFF": "aiff"}


class TooLarge(InvalidRequest):
    http_status = 413


def _limit_error(settings: ServerSettings) -> TooLarge:
    return TooLarge(f"upload too large: the limit is {settings.max_upload_bytes} bytes")


async def save_upload(upload, folder: Path, name: str, settings: ServerSettings) -> Path:
    """Stream a Starlette `UploadFile` to `folder/name` (413 past the byte limit), then check it."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    size = 0
    with open(target, "wb") as out:
        while chunk := await upload.read(_CHUNK):
            size += len(chunk)
            if size > settings.max_upload_bytes:
                out.close()
                target.unlink(missing_ok=True)
                raise _limit_error(settings)
            out.write(chunk)
    return checked_audio(target, settings)


def save_base64(data: str, folder: Path, name: str, settings: ServerSettings) -> Path:
    """A base64 (or `data:audio/...;base64,`) string → a checked audio file."""
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    if len(payload) * 3 // 4 > settings.max_upload_bytes:
        raise _limit_error(settings)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("input_audio.data is not valid base64") from exc
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.write_bytes(raw)
    return checked_audio(target, settings)


def checked_audio(path: Path, settings: ServerSettings) -> Path:
    """Decode the whole file (415 when it is not audio we can read, too long or empty) and give
    it the extension of its real format."""
    try:
        if path.stat().st_size == 0:
            raise InvalidAudio("the uploaded file is empty")
        try:
            kind = sf.info(str(path)).format
        except (sf.SoundFileError, RuntimeError) as exc:
            raise InvalidAudio(f"the upload is not a readable audio file ({exc})") from exc
        ext = _EXT.get(kind)
        if ext is None:
            raise InvalidAudio(f"unsupported audio format {kind}; send wav, flac, mp3 or ogg")
        final = path.with_name(f"{path.name}.{ext}")
        os.replace(path, final)
        audio.load_audio(final, max_seconds=settings.max_upload_seconds)
        return final
    except InvalidAudio:
        for candidate in path.parent.glob(f"{path.name}*"):
            candidate.unlink(missing_ok=True)
        raise

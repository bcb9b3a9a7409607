"""Typed errors. Every failure a user can cause or fix has its own class; the server maps them
to HTTP status codes (principle 7: never return {"success": False})."""

from __future__ import annotations


class SongstepError(Exception):
    """Base class of every error songstep raises on purpose."""

    http_status = 500


class InvalidRequest(SongstepError, ValueError):
    """A request parameter is missing, out of range or inconsistent."""

    http_status = 400


class InvalidAudio(SongstepError, ValueError):
    """An audio file cannot be used: unreadable, empty, too long, too many channels."""

    http_status = 415


class ModelNotFound(SongstepError, FileNotFoundError):
    """A checkpoint, component folder or hub repository does not exist."""

    http_status = 404


class CheckpointError(SongstepError):
    """A checkpoint exists but cannot be loaded exactly (missing/unexpected key, bad shape,
    corrupt file, unreadable config, unknown model type)."""

    http_status = 500


class ChecksumMismatch(CheckpointError):
    """A downloaded or local file does not match its recorded size or sha256."""


class DownloadError(SongstepError):
    """A hub download failed (offline, missing remote file, refused revision change)."""

    http_status = 502


class OutOfMemory(SongstepError):
    """The device ran out of memory and no smaller fallback was possible."""

    http_status = 507


class Cancelled(SongstepError):
    """Work stopped because its caller cancelled it (e.g. `AutoGen.cancel()`, or a progress
    callback that raised this). Nothing is returned or written."""

    http_status = 499

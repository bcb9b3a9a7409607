"""Readable messages for the page's status box (shared by the app and its optional panels)."""

from __future__ import annotations

from songstep.errors import SongstepError
from songstep.server.store import QueueFull
from songstep.ui.i18n import t


def error_text(exc: BaseException, lang: str) -> str:
    """A readable message for the status box (the error's own text, one problem per line)."""
    if isinstance(exc, SongstepError | QueueFull | ValueError):
        lines = str(exc).splitlines() or [type(exc).__name__]
    else:
        lines = [f"internal error ({type(exc).__name__}): {exc}"]
    return f"**{t('error', lang)}:** " + "<br>".join(lines)

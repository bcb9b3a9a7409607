"""Small helpers of the command line: reading text files given by flags, and the last-resort
report of an unexpected exception (one line; the full trace with -v)."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from songstep.errors import InvalidRequest

TEXT_FILE_MAX_BYTES = 1 << 20


def read_text_file(path: Path | str, flag: str) -> str:
    """The UTF-8 text of a file named by `flag`; `InvalidRequest` when it is missing, a folder,
    unreadable, over 1 MiB or not UTF-8 (with the byte offset)."""
    path = Path(path)
    if path.is_dir():
        raise InvalidRequest(f"{flag} {path}: is a directory, expected a text file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidRequest(f"{flag} {path}: no such file") from None
    except OSError as exc:
        raise InvalidRequest(f"{flag} {path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > TEXT_FILE_MAX_BYTES:
        raise InvalidRequest(f"{flag} {path}: {len(data)} bytes, more than {TEXT_FILE_MAX_BYTES} allowed")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"{flag} {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (libraries' messages often span several)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def unexpected_error(exc: BaseException, verbose: int) -> str:
    """The one line reporting an exception nobody expected (its trace goes to stderr first
    with -v)."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
        return f"error: unexpected {type(exc).__name__}: {one_line(exc)}"
    return f"error: unexpected {type(exc).__name__}: {one_line(exc)} (run with -v for the full trace)"

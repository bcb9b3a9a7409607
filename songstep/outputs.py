"""Writing takes (audio + JSON sidecar) into an output folder without losing or mixing any.

- A take's stem is claimed exclusively (`O_EXCL` on a hidden `.<stem>.claim` file holding the
  writer's process id) and must not exist yet as `<stem>.json` or `<stem>.<format>`; a taken
  stem gets the next free suffix (`song-2`, `song-3`, …) unless `overwrite` is set. So runs that
  share a name, at the same time or not, keep every take.
- Audio and sidecar are one unit: both are written to hidden `.part` files and fsynced, then the
  sidecar is renamed into place, then the audio; the renames and the announcement of the paths
  happen with SIGINT/SIGTERM deferred (`deferred_signals`), so an interruption leaves either the
  whole take (announced) or nothing of it.
- `handle_signals()` makes SIGTERM behave like Ctrl-C: an `Interrupted` (a `KeyboardInterrupt`)
  is raised once, and cleanup code runs without a second one. Its `exit_code` is 128 + signal.
- `clean_stale` removes `.part` and `.claim` files whose writer process is gone.
- Names are plain file names: no folders, no leading dot, so nothing escapes the folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from songstep.audio import _fsync_dir, audio_writer, create_part, sidecar_text
from songstep.errors import InvalidRequest

logger = logging.getLogger(__name__)

NAME_MAX_CHARS = 200
MAX_SUFFIX = 10_000
STALE_SECONDS = 24 * 3600  # a part without a readable writer pid is stale after a day
MIN_STALE_SECONDS = 60.0  # younger files are kept even when their pid is gone (another container's
# pid namespace may share the folder; a live writer touches its files within seconds)


# -- names ------------------------------------------------------------------------------------


def check_name(name: str | None, what: str = "--name") -> None:
    """Refuse a stem that is not a plain file name (`InvalidRequest`)."""
    if name is None:
        return
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    bad = (
        not isinstance(name, str)
        or not name.strip()
        or name.startswith(".")
        or any(s in name for s in seps)
        or "\0" in name
        or len(name) > NAME_MAX_CHARS
        or os.path.isabs(name)
    )
    if bad:
        raise InvalidRequest(
            f"{what} {name!r} must be a plain file name (no folders, no leading '.', at most "
            f"{NAME_MAX_CHARS} characters); choose the folder with --output-dir"
        )


# -- signals ----------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `exit_code` is 128 + the signal number (130, 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _SignalState:
    raised = False
    depth = 0
    pending: int | None = None


_state = _SignalState()


def _on_signal(signum: int, frame: Any) -> None:
    if _state.raised:
        return  # cleanup after the first signal runs to its end
    if _state.depth:
        _state.pending = _state.pending or signum
        return
    _state.raised = True
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` once (main thread only; elsewhere a no-op)."""
    try:
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    _state.raised, _state.depth, _state.pending = False, 0, None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold a signal that arrives inside the block; raise it when the block ends."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if not _state.depth and _state.pending and not _state.raised:
            signum, _state.pending = _state.pending, None
            _state.raised = True
            raise Interrupted(signum)


# -- stale files ------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _part_pid(name: str) -> int | None:
    """The writer pid of `.<name>.<pid>-<hex>.part`, None for other names."""
    stem = name[: -len(".part")]
    tail = stem.rsplit(".", 1)[-1]
    head = tail.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _claim_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def clean_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove hidden `.part` and `.claim` files left by writers that are gone (killed runs) and
    untouched for a minute, or untouched for a day; return what was removed. Files of live
    writers are kept."""
    removed = []
    now = time.time()
    for path in Path(folder).glob(".*"):
        if path.suffix not in (".part", ".claim") or not path.is_file():
            continue
        pid = _part_pid(path.name) if path.suffix == ".part" else _claim_pid(path)
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        dead = pid is not None and pid != os.getpid() and not _pid_alive(pid)
        stale = (dead and age > MIN_STALE_SECONDS) or age > STALE_SECONDS
        if stale:
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("removed %d stale temporary files in %s", len(removed), folder)
    return removed


# -- writing takes ----------------------------------------------------------------------------


class TakeWriter:
    """Writes takes into `folder` as `<stem>.<fmt>` + `<stem>.json` (see the module doc).

    `announce(path)` is called for the audio and then the sidecar as soon as both exist (the CLI
    prints them), before a deferred signal is raised."""

    def __init__(
        self,
        folder: str | os.PathLike,
        fmt: str,
        *,
        overwrite: bool = False,
        announce: Callable[[Path], None] | None = None,
        mp3_bitrate: int = 128,
        bit_depth: int = 16,
    ) -> None:
        self.folder = Path(folder)
        self.encoding = {"mp3_bitrate": mp3_bitrate, "bit_depth": bit_depth}
        self.fmt = fmt
        self.overwrite = overwrite
        self.announce = announce or (lambda path: None)
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidRequest(f"output folder {self.folder} is not a directory")
        self.folder.mkdir(parents=True, exist_ok=True)
        clean_stale(self.folder)

    def write(
        self,
        stem: str,
        wave: Any,
        sample_rate: int,
        params: Mapping[str, Any],
        timings: Mapping[str, Any] | None = None,
    ) -> tuple[Path, Path]:
        """Write one take; return (audio path, sidecar path) as finally named."""
        check_name(stem, "take name")
        write_audio = audio_writer(wave, sample_rate, self.fmt, params=params, **self.encoding)
        text = sidecar_text(params, timings)
        made: list[Path] = []  # every file this call created and must remove on failure
        try:
            with deferred_signals():
                made.append(create_part(self.folder / f"{stem}.{self.fmt}"))
            write_audio(made[0])
            with deferred_signals():
                made.append(create_part(self.folder / f"{stem}.json"))
            made[1].write_text(text, encoding="utf-8")
            for part in made:
                _fsync(part)
            return self._commit(stem, made)
        except BaseException:
            for path in made:
                path.unlink(missing_ok=True)
            raise

    def _commit(self, stem: str, made: list[Path]) -> tuple[Path, Path]:
        with deferred_signals():
            final, claim = self._claim(stem)
            made.append(claim)
        audio, sidecar = self.folder / f"{final}.{self.fmt}", self.folder / f"{final}.json"
        with deferred_signals():
            os.replace(made[1], sidecar)
            try:
                os.replace(made[0], audio)
            except BaseException:
                sidecar.unlink(missing_ok=True)
                raise
            _fsync_dir(self.folder)
            claim.unlink(missing_ok=True)
            del made[:]
            self.announce(audio)
            self.announce(sidecar)
        return audio, sidecar

    def _claim(self, stem: str) -> tuple[str, Path]:
        """The first free stem (`stem`, `stem-2`, …) and its claim file, created exclusively."""
        for n in range(1, MAX_SUFFIX):
            name = stem if n == 1 else f"{stem}-{n}"
            claim = self.folder / f".{name}.claim"
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.overwrite:
                    continue
                owner = _claim_pid(claim)
                if owner is not None and owner != os.getpid() and not _pid_alive(owner):  # a killed run's
                    claim.unlink(missing_ok=True)
                    return self._claim(stem)
                raise InvalidRequest(f"{self.folder / name}.{self.fmt} is being written by another run (pid {owner})") from None
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
            taken = (self.folder / f"{name}.json").exists() or (self.folder / f"{name}.{self.fmt}").exists()
            if self.overwrite or not taken:
                return name, claim
            claim.unlink(missing_ok=True)
        raise InvalidRequest(f"no free name for {stem!r} in {self.folder} after {MAX_SUFFIX} tries")


def _fsync(path: Path) -> None:
    with open(path, "r+b") as f:
        os.fsync(f.fileno())

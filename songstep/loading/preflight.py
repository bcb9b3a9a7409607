"""What a download or a load checks first and tells the user: the hub's host name resolves, sizes
as the status lines show them, per-file download progress (never huggingface_hub's own bars), and
a user's own checkpoint folder (another revision, a fine-tune) told once that it is used as it is,
with the revision huggingface_hub recorded beside it when there is one."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from songstep.errors import DownloadError

status = logging.getLogger("songstep.status")  # one line per stage; the CLI shows these on stderr

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_TOLD: set[str] = set()


def format_size(size: int) -> str:
    """Bytes as the status lines show them: GB above 0.1 GB, else MB."""
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def check_name_resolves(endpoint: str | None, folder: Path | None = None, required: Iterable[str] = ()) -> None:
    """Fail at once when the hub's host name does not resolve (no network, a typo in HF_ENDPOINT):
    huggingface_hub would retry each request five times with backoff first. Skipped behind a
    proxy, which resolves names itself. When `folder` exists without some `required` files, the
    error names them (the user's copy is incomplete)."""
    if not endpoint or any(os.environ.get(v) for v in _PROXY_VARS):
        return
    parts = urlsplit(endpoint)
    if not parts.hostname:
        raise DownloadError(f"the hub endpoint {endpoint!r} is not a URL; fix HF_ENDPOINT (e.g. https://huggingface.co)")
    try:
        socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError) as e:
        missing = [n for n in required if not (folder / n).is_file()] if folder is not None and folder.is_dir() else []
        first = f"{folder} is incomplete (missing {', '.join(missing)}) and " if missing else ""
        raise DownloadError(
            f"{first}cannot resolve {parts.hostname} (the hub at {endpoint}: {e}): check the network, use --offline "
            "with checkpoints already on disk, or set HF_ENDPOINT to a reachable mirror") from None


def found_revision(folder: Path, subfolder: str | None) -> str | None:
    """The commit a hand-placed folder came from, when huggingface_hub's `local_dir` metadata
    (`.cache/huggingface/download/<file>.metadata`, first line) is next to it; else None.
    `subfolder`: the folder's path inside its repo (the main bundle), None for a repo root."""
    folder = Path(folder)
    repo_path = f"{subfolder}/config.json" if subfolder else "config.json"
    base = folder.parent if subfolder else folder
    meta = base / ".cache" / "huggingface" / "download" / f"{repo_path}.metadata"
    try:
        first = meta.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return first if re.fullmatch(r"[0-9a-f]{40}", first) else None


def tell_used_as_is(folder: Path, subfolder: str | None, pinned: str | None) -> None:
    """Say once per folder that a user's own copy is used as it is (not checked against the pinned
    checksums, which guard downloads), with the revision found."""
    if str(folder) in _TOLD:
        return
    _TOLD.add(str(folder))
    revision = found_revision(folder, subfolder)
    at = f"revision {revision[:10]}" if revision else "unknown revision"
    other = f", pinned {pinned[:10]}" if revision and pinned and revision != pinned else ""
    status.info("using %s as it is (%s%s; not downloaded by songstep, so not checked against the pinned "
                "checksums; its shapes are checked when it loads)", folder, at, other)


def tell_downloading(name: str, files: int, size: int, repo_id: str, commit: str, folder: Path) -> None:
    """The status line printed before a component's download starts."""
    status.info("downloading %s: %d files, %s from %s@%s into %s", name, files, format_size(size), repo_id,
                commit[:10], folder)


@dataclass(frozen=True)
class DownloadProgress:
    component: str
    filename: str  # relative to the component folder
    index: int  # 0-based file number within the component
    count: int
    done: int  # bytes of this file so far
    total: int | None


ProgressFn = Callable[[DownloadProgress], None]


def progress_bar(progress: ProgressFn | None, component: str, filename: str, index: int, count: int) -> type:
    """A tqdm-compatible class for `hf_hub_download(tqdm_class=...)` that reports to `progress`
    (silent when None: huggingface_hub's own bars never reach a library user's output)."""
    progress = progress or (lambda _: None)

    class _Bar:
        def __init__(self, *_: Any, total: int | None = None, initial: int = 0, **__: Any) -> None:
            self.n, self.total = initial, total
            self.update(0)

        def update(self, n: int | float | None = 1) -> None:
            self.n += n or 0
            progress(DownloadProgress(component, filename, index, count, int(self.n), self.total))

        def _ignore(self, *_: Any, **__: Any) -> None:  # network-byte counts, postfix text, redraws
            pass

        update_transfer = set_postfix_str = set_transfer_postfix_str = refresh = close = __exit__ = _ignore

        def __enter__(self) -> _Bar:
            return self

    return _Bar

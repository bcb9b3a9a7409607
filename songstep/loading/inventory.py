"""What is under a checkpoints root and what a download would fetch: `plan_downloads` asks the hub
(repo info and file listing, no file bytes) for the files and sizes still missing, so they can be
shown before the download starts; `folder_state` tells `songstep info` whether a folder is
songstep's own download (checked against the pinned checksums), the user's own copy (used as it
is) or incomplete."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from songstep.errors import DownloadError, ModelNotFound
from songstep.loading import hub, preflight
from songstep.loading.hub import (
    COMPONENTS,
    LOCK_NAME,
    MAIN_REPO,
    SHA_CACHE_NAME,
    Component,
    HubClient,
    LockFile,
    ShaCache,
    _for_source,
    _relative,
    _remote_files,
    _Run,
    _target_commit,
    _usable,
)


@dataclass(frozen=True)
class PlannedDownload:
    """What `download()` would fetch for one component: files missing or stale under `root`."""

    name: str
    repo_id: str
    commit: str
    files: int
    size: int  # bytes still to fetch


def plan_downloads(components: Iterable[str], root: str | Path = "checkpoints", *, source: str = MAIN_REPO,
                   update: bool = False, client: HubClient | None = None,
                   table: Mapping[str, Component] | None = None) -> list[PlannedDownload]:
    """Ask the hub (repo info and file listing, no file bytes) what `download()` will fetch and how
    big it is, so the size can be shown before the download starts. Complete folders are left out."""
    table = table if table is not None else COMPONENTS
    client = client if client is not None else hub.HfHubClient()
    root = Path(root).expanduser()
    preflight.check_name_resolves(getattr(client, "endpoint", None))
    run = _Run(root, client, ShaCache(root / SHA_CACHE_NAME), LockFile(root / LOCK_NAME), False, update, "none", None)
    planned = []
    for name in components:
        if name not in table:
            raise ModelNotFound(f"unknown component {name!r}; known: {', '.join(table)}")
        comp = _for_source(table[name], source, table)
        folder = root / comp.folder
        if not update and _usable(folder, comp, run.lock.components.get(comp.name), run):
            continue
        commit = _target_commit(comp, run)
        todo = [f for f in _remote_files(comp, commit, run)
                if not ((folder / _relative(comp, f.path)).is_file()
                        and (folder / _relative(comp, f.path)).stat().st_size == f.size)]
        planned.append(PlannedDownload(comp.name, comp.repo_id, commit, len(todo), sum(f.size for f in todo)))
    return planned


def folder_state(root: str | Path, comp: Component) -> dict[str, Any] | None:
    """What `songstep info` says of `root/<folder>`: None when absent; else its folder and whether
    songstep downloaded it (checked against the pinned checksums and the lock), it is the user's
    own copy (used as it is, revision when known) or it is incomplete (which files are missing)."""
    root = Path(root).expanduser()
    folder = root / comp.folder
    if not folder.is_dir():
        return None
    state: dict[str, Any] = {"folder": str(folder)}
    missing = [name for name in comp.required_files if not (folder / name).is_file()]
    if missing:
        state["state"] = f"incomplete: missing {', '.join(missing)}"
        return state
    try:
        entry = LockFile(root / LOCK_NAME).components.get(comp.name)
    except DownloadError:
        entry = None
    if entry is not None and entry.get("status") == "complete":
        state.update(state="downloaded (checked against the pinned checksums)", commit=entry.get("commit"))
        return state
    if entry is not None:
        state["state"] = "partial download: run `songstep download` again"
        return state
    state["state"] = "local (used as is)"
    revision = preflight.found_revision(folder, comp.subfolder)
    if revision:
        state["revision"] = revision
    return state

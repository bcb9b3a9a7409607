"""Which job store a URL names (kept apart from both stores, which it imports)."""

from __future__ import annotations

from pathlib import Path

from songstep.server.store import JobStore, SQLiteJobStore


def open_store(target: str | Path) -> JobStore:
    """The job store a URL names: `postgresql://...` (or `postgres://`) → `PostgresJobStore`
    (several API replicas may share it); `sqlite:///path` or a plain path → `SQLiteJobStore`."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        from songstep.server.store_postgres import PostgresJobStore

        return PostgresJobStore(text)
    return SQLiteJobStore(text.removeprefix("sqlite://") if text.startswith("sqlite:///") else text)


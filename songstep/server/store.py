"""Durable job records: the `JobStore` interface and its SQLite (WAL) implementation.

A job is written (status `queued`) before the server answers the submit, so an accepted job
survives a crash. The worker claims the oldest queued job of its model (`queued` → `running`)
and finishes it (`succeeded` with its result, or `failed`/`cancelled` with a reason). After a
restart, `recover()` re-queues the jobs that were running (up to `max_attempts` runs) or fails
them with a reason; succeeded jobs are never touched, so a finished job never runs again.

A networked store (Postgres, Redis) implements the same methods.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


class QueueFull(Exception):
    """The bounded queue holds `limit` jobs already."""

    def __init__(self, limit: int):
        super().__init__(f"the job queue is full ({limit} jobs waiting); retry later")
        self.limit = limit


@dataclass
class Job:
    id: str
    model: str
    spec: dict[str, Any]  # {"fields": request fields, "options": worker options, "uploads": [...]}
    status: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    stage: str = ""
    progress: float = 0.0
    idempotency_key: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobStore(Protocol):
    def add(self, job: Job, *, queue_limit: int | None = None) -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def by_idempotency_key(self, key: str) -> Job | None: ...
    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> list[Job]: ...
    def claim(self, model: str) -> Job | None: ...
    def set_progress(self, job_id: str, stage: str, progress: float) -> None: ...
    def finish(self, job_id: str, status: str, *, result: dict | None = None, error: str | None = None) -> bool: ...
    def cancel_queued(self, job_id: str) -> bool: ...
    def recover(self, *, requeue: bool, max_attempts: int) -> dict[str, int]: ...
    def counts(self) -> dict[str, int]: ...
    def position(self, job_id: str) -> int: ...
    def average_seconds(self, window: int = 50) -> float | None: ...
    def expired(self, keep: int) -> list[str]: ...
    def delete(self, job_ids: list[str]) -> None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE,
    seq INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
"""
_COLUMNS = ("id", "model", "spec", "status", "created_at", "started_at", "finished_at", "result", "error",
            "attempts", "stage", "progress", "idempotency_key")


def new_job_id() -> str:
    return uuid.uuid4().hex


def _row_to_job(row: sqlite3.Row) -> Job:
    data = dict(zip(_COLUMNS, row))
    data["spec"] = json.loads(data["spec"])
    data["result"] = json.loads(data["result"]) if data["result"] else None
    return Job(**data)


class SQLiteJobStore:
    """`JobStore` on one SQLite file in WAL mode (durable commits, readers never block the writer).
    One connection guarded by a lock: the server's threads share it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def _select(self, where: str, args: tuple = (), tail: str = "") -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE {where} {tail}", args).fetchall()
        return [_row_to_job(r) for r in rows]

    def add(self, job: Job, *, queue_limit: int | None = None) -> Job:
        """Insert a queued job; with `queue_limit`, raise `QueueFull` when that many wait already.
        With an idempotency key already used, return the existing job instead."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if job.idempotency_key:
                    found = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE idempotency_key = ?",
                                             (job.idempotency_key,)).fetchone()
                    if found:
                        self._db.execute("COMMIT")
                        return _row_to_job(found)
                if queue_limit is not None:
                    (waiting,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()
                    if waiting >= queue_limit:
                        raise QueueFull(queue_limit)
                (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()
                self._db.execute(
                    "INSERT INTO jobs (id, model, spec, status, created_at, attempts, idempotency_key, seq) "
                    "VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                    (job.id, job.model, json.dumps(job.spec), QUEUED, job.created_at, job.idempotency_key, seq),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return job

    def get(self, job_id: str) -> Job | None:
        jobs = self._select("id = ?", (job_id,))
        return jobs[0] if jobs else None

    def by_idempotency_key(self, key: str) -> Job | None:
        jobs = self._select("idempotency_key = ?", (key,))
        return jobs[0] if jobs else None

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> list[Job]:
        where, args = ("status = ?", (status,)) if status else ("1 = 1", ())
        return self._select(where, (*args, limit, offset), "ORDER BY seq DESC LIMIT ? OFFSET ?")

    def claim(self, model: str) -> Job | None:
        """The oldest queued job of `model`, now `running` (attempts + 1); None when none waits."""
        with self._lock:
            row = self._db.execute("SELECT id FROM jobs WHERE status = ? AND model = ? ORDER BY seq LIMIT 1",
                                   (QUEUED, model)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1, stage = '', "
                             "progress = 0 WHERE id = ?", (RUNNING, time.time(), row[0]))
            return self.get(row[0])

    def set_progress(self, job_id: str, stage: str, progress: float) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET stage = ?, progress = ? WHERE id = ? AND status = ?",
                             (stage, progress, job_id, RUNNING))

    def finish(self, job_id: str, status: str, *, result: dict | None = None, error: str | None = None) -> bool:
        """Move a queued or running job to a final state; False if it was already final."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ?, progress = ? "
                "WHERE id = ? AND status IN (?, ?)",
                (status, time.time(), json.dumps(result) if result is not None else None, error,
                 1.0 if status == SUCCEEDED else 0.0, job_id, QUEUED, RUNNING),
            )
            return cur.rowcount == 1

    def cancel_queued(self, job_id: str) -> bool:
        return self.finish(job_id, CANCELLED, error="cancelled by the client") if self._is(job_id, QUEUED) else False

    def _is(self, job_id: str, status: str) -> bool:
        job = self.get(job_id)
        return job is not None and job.status == status

    def recover(self, *, requeue: bool, max_attempts: int) -> dict[str, int]:
        """After a restart: jobs left `running` were interrupted. Re-queue them (while they have
        had fewer than `max_attempts` runs) or fail them with the reason."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            failed = self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE status = ? AND (? = 0 OR attempts >= ?)",
                (FAILED, time.time(), "interrupted: the server stopped while this job ran", RUNNING,
                 int(requeue), max_attempts),
            ).rowcount
            requeued = self._db.execute("UPDATE jobs SET status = ?, stage = '', progress = 0 WHERE status = ?",
                                        (QUEUED, RUNNING)).rowcount
            self._db.execute("COMMIT")
        return {"requeued": requeued, "failed": failed}

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update(dict(rows))
        return counts

    def position(self, job_id: str) -> int:
        """1-based place among queued jobs (0 when not queued)."""
        with self._lock:
            row = self._db.execute("SELECT seq, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[1] != QUEUED:
                return 0
            (ahead,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ? AND seq < ?",
                                        (QUEUED, row[0])).fetchone()
        return ahead + 1

    def average_seconds(self, window: int = 50) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT AVG(d) FROM (SELECT finished_at - started_at AS d FROM jobs WHERE status = ? "
                "AND started_at IS NOT NULL ORDER BY seq DESC LIMIT ?)", (SUCCEEDED, window)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def expired(self, keep: int) -> list[str]:
        """Ids of finished jobs beyond the `keep` most recently finished ones."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE status IN (?, ?, ?) ORDER BY finished_at DESC LIMIT -1 OFFSET ?",
                (*FINISHED, keep)).fetchall()
        return [r[0] for r in rows]

    def delete(self, job_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def close(self) -> None:
        with self._lock:
            self._db.close()

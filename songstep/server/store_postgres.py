"""The `JobStore` on PostgreSQL (psycopg 3), for several API replicas sharing one queue.

Same semantics as the SQLite store: a job is committed (status `queued`) before the submit is
answered (PostgreSQL's default `synchronous_commit=on`: the commit is on disk when it returns);
`claim` moves the oldest queued job of a model to `running` with `FOR UPDATE SKIP LOCKED`, so two
replicas never claim the same job; a final state is final; `recover` re-queues interrupted jobs
(up to `max_attempts` runs) or fails them with the reason.

With several API replicas, pass `stale_after` seconds: `recover` then touches only running jobs
whose heartbeat (claim or last progress write) is older than that, so one replica restarting
never steals the jobs another live replica is running.

Migrations: the table `songstep_schema` holds the schema version; `_MIGRATIONS[i]` moves the
schema from version i to i + 1, each in its own transaction, under an advisory lock.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from songstep.server.store import (
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    Job,
    QueueFull,
)

_LOCK_ID = 7_345_120_001  # pg_advisory_xact_lock key for migrations
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            seq BIGSERIAL UNIQUE,
            id TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            spec JSONB NOT NULL,
            status TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            result JSONB,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            stage TEXT NOT NULL DEFAULT '',
            progress DOUBLE PRECISION NOT NULL DEFAULT 0,
            idempotency_key TEXT UNIQUE
        )""",
        "CREATE INDEX jobs_status ON jobs (status, model, seq)",
    ),
    (
        "ALTER TABLE jobs ADD COLUMN heartbeat DOUBLE PRECISION",
        "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)
_COLUMNS = ("id", "model", "spec", "status", "created_at", "started_at", "finished_at", "result", "error",
            "attempts", "stage", "progress", "idempotency_key")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"


def migrate(conn: Any) -> int:
    """Bring the schema to `SCHEMA_VERSION`; returns the version found before."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute("CREATE TABLE IF NOT EXISTS songstep_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM songstep_schema").fetchone()
        if row is None:
            conn.execute("INSERT INTO songstep_schema (version) VALUES (0)")
        found = row[0] if row else 0
        if found > SCHEMA_VERSION:
            raise RuntimeError(f"the job store's schema is version {found}, newer than this songstep "
                               f"({SCHEMA_VERSION}); upgrade songstep")
        for version in range(found, SCHEMA_VERSION):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("UPDATE songstep_schema SET version = %s", (version + 1,))
    return found


def _split_stale_after(url: str) -> tuple[str, float | None]:
    """`...?stale_after=60` in the store URL (songstep's, not libpq's) → (URL without it, 60.0)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    found = [float(v) for k, v in query if k == "stale_after"]
    rest = urlencode([(k, v) for k, v in query if k != "stale_after"])
    return urlunsplit(parts._replace(query=rest)), (found[-1] if found else None)


def _job(row: tuple) -> Job:
    return Job(**dict(zip(_COLUMNS, row)))


class PostgresJobStore:
    """`JobStore` on one PostgreSQL database. One connection (autocommit; explicit transactions
    where several statements must hold together) shared by the server's threads under a lock."""

    def __init__(self, url: str, *, stale_after: float | None = None):
        import psycopg
        from psycopg.types.json import Jsonb

        url, from_url = _split_stale_after(url)
        self.url, self.stale_after = url, stale_after if stale_after is not None else from_url
        self._Jsonb = Jsonb
        self._lock = threading.RLock()
        self._db = psycopg.connect(url, autocommit=True)
        migrate(self._db)

    def _select(self, where: str, args: tuple = (), tail: str = "") -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"{_SELECT} WHERE {where} {tail}", args).fetchall()
        return [_job(r) for r in rows]

    def add(self, job: Job, *, queue_limit: int | None = None) -> Job:
        """Insert a queued job; with `queue_limit`, raise `QueueFull` when that many wait already.
        With an idempotency key already used, return the existing job instead."""
        with self._lock, self._db.transaction():
            # one submit at a time across replicas: the limit check and the insert hold together
            self._db.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
            if job.idempotency_key:
                found = self._db.execute(f"{_SELECT} WHERE idempotency_key = %s", (job.idempotency_key,)).fetchone()
                if found:
                    return _job(found)
            if queue_limit is not None:
                (waiting,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = %s", (QUEUED,)).fetchone()
                if waiting >= queue_limit:
                    raise QueueFull(queue_limit)
            self._db.execute(
                "INSERT INTO jobs (id, model, spec, status, created_at, attempts, idempotency_key) "
                "VALUES (%s, %s, %s, %s, %s, 0, %s)",
                (job.id, job.model, self._Jsonb(job.spec), QUEUED, job.created_at, job.idempotency_key),
            )
        return job

    def get(self, job_id: str) -> Job | None:
        jobs = self._select("id = %s", (job_id,))
        return jobs[0] if jobs else None

    def by_idempotency_key(self, key: str) -> Job | None:
        jobs = self._select("idempotency_key = %s", (key,))
        return jobs[0] if jobs else None

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> list[Job]:
        where, args = ("status = %s", (status,)) if status else ("TRUE", ())
        return self._select(where, (*args, limit, offset), "ORDER BY seq DESC LIMIT %s OFFSET %s")

    def claim(self, model: str) -> Job | None:
        """The oldest queued job of `model`, now `running` (attempts + 1); None when none waits.
        Replicas claiming at once skip each other's locked rows."""
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET status = %s, started_at = %s, heartbeat = %s, attempts = attempts + 1, "
                "stage = '', progress = 0 WHERE id = (SELECT id FROM jobs WHERE status = %s AND model = %s "
                f"ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {', '.join(_COLUMNS)}",
                (RUNNING, now, now, QUEUED, model),
            ).fetchone()
        return _job(row) if row else None

    def set_progress(self, job_id: str, stage: str, progress: float) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET stage = %s, progress = %s, heartbeat = %s WHERE id = %s AND status = %s",
                             (stage, progress, time.time(), job_id, RUNNING))

    def finish(self, job_id: str, status: str, *, result: dict | None = None, error: str | None = None) -> bool:
        """Move a queued or running job to a final state; False if it was already final."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = %s, finished_at = %s, result = %s, error = %s, progress = %s "
                "WHERE id = %s AND status IN (%s, %s)",
                (status, time.time(), self._Jsonb(result) if result is not None else None, error,
                 1.0 if status == SUCCEEDED else 0.0, job_id, QUEUED, RUNNING),
            )
            return cur.rowcount == 1

    def cancel_queued(self, job_id: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = %s, finished_at = %s, error = %s, progress = 0 WHERE id = %s AND status = %s",
                (CANCELLED, time.time(), "cancelled by the client", job_id, QUEUED))
            return cur.rowcount == 1

    def recover(self, *, requeue: bool, max_attempts: int) -> dict[str, int]:
        """Jobs left `running` (with `stale_after`: whose heartbeat is that old) were interrupted.
        Re-queue them (while they have had fewer than `max_attempts` runs) or fail them."""
        stale = "TRUE" if self.stale_after is None else "COALESCE(heartbeat, 0) < %(cutoff)s"
        args = {"running": RUNNING, "queued": QUEUED, "failed": FAILED, "now": time.time(), "requeue": int(requeue),
                "max": max_attempts, "cutoff": time.time() - (self.stale_after or 0),
                "why": "interrupted: the server stopped while this job ran"}
        with self._lock, self._db.transaction():
            failed = self._db.execute(
                "UPDATE jobs SET status = %(failed)s, finished_at = %(now)s, error = %(why)s WHERE status = %(running)s "
                f"AND {stale} AND (%(requeue)s = 0 OR attempts >= %(max)s)", args).rowcount
            requeued = self._db.execute(
                f"UPDATE jobs SET status = %(queued)s, stage = '', progress = 0 WHERE status = %(running)s AND {stale}",
                args).rowcount
        return {"requeued": requeued, "failed": failed}

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts

    def position(self, job_id: str) -> int:
        """1-based place among queued jobs (0 when not queued)."""
        with self._lock:
            row = self._db.execute("SELECT seq, status FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if row is None or row[1] != QUEUED:
                return 0
            (ahead,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = %s AND seq < %s",
                                        (QUEUED, row[0])).fetchone()
        return int(ahead) + 1

    def average_seconds(self, window: int = 50) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT AVG(d) FROM (SELECT finished_at - started_at AS d FROM jobs WHERE status = %s "
                "AND started_at IS NOT NULL ORDER BY seq DESC LIMIT %s) AS recent", (SUCCEEDED, window)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def expired(self, keep: int) -> list[str]:
        """Ids of finished jobs beyond the `keep` most recently finished ones."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE status = ANY(%s) ORDER BY finished_at DESC OFFSET %s",
                (list(FINISHED), keep)).fetchall()
        return [r[0] for r in rows]

    def delete(self, job_ids: list[str]) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ANY(%s)", (list(job_ids),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

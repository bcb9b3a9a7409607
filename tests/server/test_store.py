"""The SQLite job store: queue limit, idempotency, claim order, restart recovery, retention."""

from __future__ import annotations

import sqlite3

import pytest

from songstep.server.store import FAILED, QUEUED, RUNNING, SUCCEEDED, Job, QueueFull, SQLiteJobStore


def job(i: int, key: str | None = None) -> Job:
    return Job(id=f"{i:032x}", model="m", spec={"fields": {"caption": str(i)}}, idempotency_key=key)


def test_wal_queue_limit_and_fifo_claim(tmp_path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    assert sqlite3.connect(tmp_path / "jobs.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for i in range(3):
        store.add(job(i), queue_limit=3)
    with pytest.raises(QueueFull):
        store.add(job(9), queue_limit=3)
    assert store.get(f"{9:032x}") is None
    assert [store.position(f"{i:032x}") for i in range(3)] == [1, 2, 3]
    first = store.claim("m")
    assert first.id == f"{0:032x}" and first.status == RUNNING and first.attempts == 1
    assert store.claim("other") is None
    assert store.finish(first.id, SUCCEEDED, result={"files": ["0.mp3"]})
    assert not store.finish(first.id, FAILED, error="late")  # a final state is final
    assert store.get(first.id).result == {"files": ["0.mp3"]}
    assert store.counts()[QUEUED] == 2 and store.counts()[SUCCEEDED] == 1


def test_idempotency_key_returns_the_first_job(tmp_path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    a = store.add(job(1, key="k"))
    b = store.add(job(2, key="k"))
    assert b.id == a.id and store.counts()[QUEUED] == 1


@pytest.mark.parametrize("requeue", [True, False])
def test_recover_requeues_or_fails_interrupted_jobs_and_never_touches_finished(tmp_path, requeue) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteJobStore(path)
    for i in range(3):
        store.add(job(i))
    done = store.claim("m")
    store.finish(done.id, SUCCEEDED, result={"files": []})
    running = store.claim("m")
    store.close()
    store = SQLiteJobStore(path)  # a restart
    counts = store.recover(requeue=requeue, max_attempts=2)
    assert counts == ({"requeued": 1, "failed": 0} if requeue else {"requeued": 0, "failed": 1})
    assert store.get(done.id).status == SUCCEEDED
    again = store.get(running.id)
    assert again.status == (QUEUED if requeue else FAILED)
    if requeue:  # a second interruption exhausts max_attempts=2
        assert store.claim("m").id == running.id
        assert store.recover(requeue=True, max_attempts=2) == {"requeued": 0, "failed": 1}
        assert "interrupted" in store.get(running.id).error


def test_expired_keeps_the_newest_finished(tmp_path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    for i in range(4):
        store.add(job(i))
        store.finish(store.claim("m").id, SUCCEEDED, result={})
    store.add(job(5))
    old = store.expired(keep=2)
    assert sorted(old) == [f"{0:032x}", f"{1:032x}"]
    store.delete(old)
    assert sum(store.counts().values()) == 3

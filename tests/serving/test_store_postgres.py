"""PostgreSQL job store beyond the shared suite (tests/server/test_store.py runs that against
both stores): schema migrations, two API replicas sharing one queue, stale-only recovery."""

from __future__ import annotations

import threading

import pytest

from songstep.server.store import RUNNING, SUCCEEDED, Job, SQLiteJobStore
from songstep.server.stores import open_store

psycopg = pytest.importorskip("psycopg")


def job(i: int) -> Job:
    return Job(id=f"{i:032x}", model="m", spec={"fields": {"caption": str(i)}, "options": {"n": [1, 2]}})


def test_open_store_picks_the_store_from_the_url(tmp_path, postgres_db) -> None:
    from songstep.server.store_postgres import SCHEMA_VERSION, PostgresJobStore

    assert isinstance(open_store(tmp_path / "a.sqlite3"), SQLiteJobStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/b.sqlite3"), SQLiteJobStore)
    assert (tmp_path / "b.sqlite3").exists()
    store = open_store(postgres_db)
    assert isinstance(store, PostgresJobStore)
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT version FROM songstep_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_migrations_upgrade_an_old_schema_and_keep_its_jobs(postgres_db) -> None:
    from songstep.server import store_postgres as sp

    with psycopg.connect(postgres_db, autocommit=True) as conn:  # a database left at version 1
        conn.execute("CREATE TABLE songstep_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO songstep_schema VALUES (1)")
        for statement in sp._MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO jobs (id, model, spec, status, created_at) VALUES ('a', 'm', '{}', 'queued', 1)")
    store = sp.PostgresJobStore(postgres_db)
    assert store.claim("m").id == "a"  # the claim writes the column migration 2 added
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT version FROM songstep_schema").fetchone() == (2,)
        assert conn.execute("SELECT heartbeat IS NOT NULL FROM jobs").fetchone() == (True,)
        conn.execute("UPDATE songstep_schema SET version = 99")
        conn.commit()
    with pytest.raises(RuntimeError, match="newer"):
        sp.PostgresJobStore(postgres_db)


def test_two_replicas_share_the_queue_and_never_claim_a_job_twice(postgres_db) -> None:
    from songstep.server.store_postgres import PostgresJobStore

    a, b = PostgresJobStore(postgres_db), PostgresJobStore(postgres_db)
    for i in range(40):
        (a if i % 2 else b).add(job(i))
    assert b.get(f"{3:032x}").spec == {"fields": {"caption": "3"}, "options": {"n": [1, 2]}}  # committed, visible
    claimed: list[str] = []

    def drain(store):
        while (got := store.claim("m")) is not None:
            claimed.append(got.id)
            store.finish(got.id, SUCCEEDED, result={"by": id(store)})

    threads = [threading.Thread(target=drain, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(f"{i:032x}" for i in range(40))  # each exactly once
    assert a.counts()[SUCCEEDED] == 40


def test_recover_with_stale_after_leaves_live_jobs_alone(postgres_db) -> None:
    from songstep.server.store_postgres import PostgresJobStore

    live = PostgresJobStore(postgres_db)
    live.add(job(1))
    running = live.claim("m")
    restarted = open_store(postgres_db + "?stale_after=300")
    assert restarted.stale_after == 300.0 and "stale_after" not in restarted.url
    assert restarted.recover(requeue=True, max_attempts=3) == {"requeued": 0, "failed": 0}
    assert restarted.get(running.id).status == RUNNING
    with psycopg.connect(postgres_db, autocommit=True) as conn:  # its owner stopped writing 10 minutes ago
        conn.execute("UPDATE jobs SET heartbeat = heartbeat - 600")
    assert restarted.recover(requeue=True, max_attempts=3) == {"requeued": 1, "failed": 0}

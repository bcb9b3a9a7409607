"""Crash test: `songstep serve` on the tiny pipeline in a subprocess; submit 10 jobs, `kill -9`
it while a job runs, start it again on the same data dir. Every job ends succeeded or failed with
a reason, none is lost, and no job that had succeeded runs again (its files stay byte-identical
and the second server's structured log never starts it)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.server.live import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def start(tiny_tree: Path, data: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "songstep", "serve", "--model", str(tiny_tree), "--lm", "none", "--device", "cpu",
           "--data-dir", str(data), "--port", str(port), "--offline"]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def wait_ready(proc: subprocess.Popen, base: str, log: Path) -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError("server did not start")


def jobs(base: str, ids: list[str]) -> dict[str, dict]:
    return {i: httpx.get(f"{base}/v2/jobs/{i}", timeout=10).json() for i in ids}


def started(log: Path) -> list[str]:
    out = []
    for line in log.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("message") == "job started":
            out.append(doc["job_id"])
    return out


def digest(data: Path, job_id: str) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted((data / "results" / job_id).iterdir())}


def test_kill_9_mid_run_then_restart(tiny_tree, tmp_path) -> None:
    data, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    proc = start(tiny_tree, data, port, first_log)
    try:
        wait_ready(proc, base, first_log)
        body = {"prompt": "crash test", "audio_duration": 10, "inference_steps": 2, "batch_size": 1,
                "audio_format": "wav", "use_random_seed": False}
        ids = [httpx.post(f"{base}/release_task", json={**body, "seed": i}, timeout=30).json()["data"]["task_id"]
               for i in range(10)]
        for _ in range(2400):  # kill while a job runs, after at least two succeeded
            states = jobs(base, ids)
            done = [i for i, j in states.items() if j["status"] == "succeeded"]
            if len(done) >= 2 and any(j["status"] == "running" for j in states.values()):
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {i: digest(data, i) for i in done}
    assert 2 <= len(done) < 10
    proc = start(tiny_tree, data, port, second_log)
    try:
        wait_ready(proc, base, second_log)
        for _ in range(4800):
            final = jobs(base, ids)
            if all(j["status"] in ("succeeded", "failed") for j in final.values()):
                break
            time.sleep(0.1)
        counts = httpx.get(f"{base}/v1/stats", timeout=10).json()["data"]["jobs"]
    finally:
        proc.terminate()
        proc.wait(60)
    assert set(final) == set(ids)  # none lost
    for job in final.values():
        assert job["status"] in ("succeeded", "failed"), job
        if job["status"] == "failed":
            assert job["error"], job
    assert not set(started(second_log)) & set(done)  # none run twice after success
    assert {i: digest(data, i) for i in done} == before
    assert counts["total"] == 10 and counts["queued"] == counts["running"] == 0
    rerun = [i for i in ids if i not in done and final[i]["attempts"] > 1]
    assert rerun, "the interrupted job is re-queued by default"
    assert started(first_log).count(rerun[0]) == 1 and started(second_log).count(rerun[0]) == 1

"""The /v2 job API: submit (idempotency key), get, list, cancel, download, SSE progress; the
bounded queue (429 + Retry-After), job timeouts and retention. A fake pipeline whose jobs take
a controllable time (the HTTP and queue behaviour is what is tested)."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")

import soundfile as sf  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from songstep.server.app import create_app  # noqa: E402
from songstep.server.settings import ServerSettings  # noqa: E402
from tests.server.fakes import FakePipeline  # noqa: E402


class GatedPipeline(FakePipeline):
    """Each job waits at its first step until the test opens the gate."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()

    def run(self, request, *, progress=None, **kw):
        while not self.gate.wait(0.02):
            progress("dit", 0, 4)  # a cancel or timeout lands here
        return super().run(request, progress=progress, **kw)


def make(tmp_path, pipe, **kw):
    return TestClient(create_app(lambda: pipe, ServerSettings(data_dir=tmp_path, **kw)))


def until(client, job_id, states, polls=1000):
    for _ in range(polls):
        job = client.get(f"/v2/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(job)


def test_submit_get_list_download_and_idempotency(tmp_path) -> None:
    pipe = FakePipeline()
    with make(tmp_path, pipe) as c:
        body = {"caption": "jazz", "duration": 10, "seed": 4, "batch": 2, "audio_format": "wav", "thinking": False}
        r = c.post("/v2/jobs", json=body, headers={"Idempotency-Key": "order-1"})
        assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
        job_id = r.json()["id"]
        again = c.post("/v2/jobs", json={**body, "caption": "other"}, headers={"Idempotency-Key": "order-1"})
        assert again.json()["id"] == job_id
        job = until(c, job_id, ("succeeded",))
        assert job["seeds"] == [4, 5] and job["audio"] == [f"/v2/jobs/{job_id}/audio/0", f"/v2/jobs/{job_id}/audio/1"]
        assert len(pipe.requests) == 1 and pipe.requests[0].caption == "jazz"
        data, rate = sf.read(io.BytesIO(c.get(job["audio"][1]).content))
        assert rate == 48000 and data.shape == (4800, 2)
        assert c.get(f"/v2/jobs/{job_id}/audio/2").status_code == 404
        listed = c.get("/v2/jobs", params={"status": "succeeded"}).json()
        assert [j["id"] for j in listed["jobs"]] == [job_id] and listed["counts"]["succeeded"] == 1
        assert c.post(f"/v2/jobs/{job_id}/cancel").status_code == 409
        assert c.get("/v2/jobs/" + "f" * 32).status_code == 404
        assert c.get("/v2/jobs/not-an-id").status_code == 422
        assert c.post("/v2/jobs", json={"caption": "x", "model": "acestep-v15-xl-sft"}).status_code == 404
        assert c.post("/v2/jobs", json={"caption": "x", "unknown_field": 1}).status_code == 422


def test_queue_fills_then_429_with_retry_after_and_cancel(tmp_path) -> None:
    pipe = GatedPipeline()
    with make(tmp_path, pipe, queue_size=3, retry_after=7) as c:
        running = c.post("/v2/jobs", json={"caption": "r"}).json()["id"]
        until(c, running, ("running",))
        queued = [c.post("/v2/jobs", json={"caption": f"q{i}"}).json() for i in range(3)]
        assert [q["queue_position"] for q in queued] == [1, 2, 3]
        full = c.post("/v2/jobs", json={"caption": "extra"})
        assert full.status_code == 429 and full.headers["retry-after"] == "7" and full.json()["code"] == 429
        assert c.post("/release_task", json={"prompt": "extra"}).status_code == 429
        stats = c.get("/v1/stats").json()["data"]
        assert stats["queue_size"] == 3 and stats["jobs"]["running"] == 1 and stats["queue_maxsize"] == 3
        assert c.post(f"/v2/jobs/{queued[0]['id']}/cancel").json()["status"] == "cancelled"
        assert c.get(f"/v2/jobs/{queued[1]['id']}").json()["queue_position"] == 1
        c.post(f"/v2/jobs/{running}/cancel")
        job = until(c, running, ("cancelled",))
        assert job["error"] == "cancelled by the client"
        pipe.gate.set()
        for q in queued[1:]:
            assert until(c, q["id"], ("succeeded",))["status"] == "succeeded"
        assert [r.caption for r in pipe.requests] == ["q1", "q2"]  # the cancelled ones never ran


def test_job_timeout_fails_with_the_reason(tmp_path) -> None:
    with make(tmp_path, GatedPipeline(), job_timeout=0.2) as c:
        job = until(c, c.post("/v2/jobs", json={"caption": "slow"}).json()["id"], ("failed",))
        assert job["error"] == "timed out after 0.2 s"


def test_events_stream_progress_then_done(tmp_path) -> None:
    pipe = FakePipeline(delay=0.4, steps=4)
    with make(tmp_path, pipe) as c:
        job_id = c.post("/v2/jobs", json={"caption": "sse"}).json()["id"]
        with c.stream("GET", f"/v2/jobs/{job_id}/events") as r:
            text = r.read().decode()
        events = [(b.split("\n")[0][7:], json.loads(b.split("\n")[1][6:])) for b in text.strip().split("\n\n")]
        assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
        progress = [e for name, e in events if name == "progress"]
        assert progress and all(0.0 <= e["progress"] <= 1.0 for e in progress)


def test_retention_deletes_old_results(tmp_path) -> None:
    with make(tmp_path, FakePipeline(), keep_results=2) as c:
        ids = []
        for i in range(4):
            ids.append(c.post("/v2/jobs", json={"caption": f"k{i}"}).json()["id"])
            until(c, ids[-1], ("succeeded",))
        time.sleep(0.1)
        assert [c.get(f"/v2/jobs/{i}").status_code for i in ids] == [404, 404, 200, 200]
        assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(ids[2:])


def test_each_loaded_model_has_its_worker_and_unknown_models_fail(tmp_path) -> None:
    turbo, base = FakePipeline(), FakePipeline(name="acestep-v15-base")
    with make(tmp_path, {"acestep-v15-turbo": turbo, "acestep-v15-base": base}) as c:
        models = c.get("/v1/models").json()["data"]
        assert [m["name"] for m in models["models"]] == ["acestep-v15-turbo", "acestep-v15-base"]
        a = c.post("/v2/jobs", json={"caption": "default"}).json()["id"]
        b = c.post("/release_task", json={"prompt": "on base", "model": "acestep-v15-base"}).json()["data"]["task_id"]
        assert until(c, a, ("succeeded",))["model"] == "acestep-v15-turbo"
        assert until(c, b, ("succeeded",))["model"] == "acestep-v15-base"
        assert [r.caption for r in turbo.requests] == ["default"] and [r.caption for r in base.requests] == ["on base"]
        r = c.post("/release_task", json={"prompt": "x", "model": "acestep-v15-sft"})
        assert r.status_code == 404 and "not loaded" in r.json()["error"] and len(base.requests) == 1
        assert c.post("/release_task", json={"sample_query": "a song"}).status_code == 400  # no planner LM


def test_a_request_past_its_timeout_gets_504(tmp_path) -> None:
    from types import SimpleNamespace

    pipe = GatedPipeline()
    pipe.planner = SimpleNamespace(name="fake-lm", format=lambda *a, **k: None)
    with make(tmp_path, pipe, request_timeout=0.3) as c:
        job = c.post("/v2/jobs", json={"caption": "holds the model"}).json()["id"]
        until(c, job, ("running",))
        r = c.post("/format_input", json={"prompt": "waits for the model's lock"})
        assert r.status_code == 504 and r.json()["code"] == 504 and "timed out" in r.json()["error"]
        pipe.gate.set()
        assert until(c, job, ("succeeded",))["status"] == "succeeded"

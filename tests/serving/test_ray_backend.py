"""The REST server on the Ray backend, with a real Ray cluster (`ray.init(num_cpus=2)`, bound to
127.0.0.1, one per module) and the tiny pipeline: two synthesizer replicas serve 20 jobs through
the /v2 routes with @serve.batch forming batches larger than one; a replica killed mid-job
(`ray.kill`) still leaves every job succeeded (the job is retried on the other replica)."""

from __future__ import annotations

import io
import json
import re
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")

import soundfile as sf  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from songstep.server.app import create_app  # noqa: E402
from songstep.server.settings import ServerSettings  # noqa: E402
from songstep.serving.backend import RayBackend  # noqa: E402
from songstep.serving.config import ServingConfig  # noqa: E402

pytestmark = pytest.mark.slow
BODY = {"caption": "lofi", "duration": 10, "audio_format": "wav", "thinking": False}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # no Serve HTTP proxy is started
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def server(cluster, tiny_tree, tmp_path_factory):
    config = ServingConfig(model=str(tiny_tree), replicas=2, num_cpus=0.5, max_batch=4, batch_wait_s=0.3,
                           concurrency=8, max_retries=3, retry_backoff_s=0.2, drain_s=60)
    backend = RayBackend(config, address="auto")
    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("ray-data"), queue_size=100)
    with TestClient(create_app(backend.start, settings)) as client:
        yield client, backend
    backend.shutdown()


def submit(client, n: int, **extra) -> list[str]:
    ids = []
    for i in range(n):
        r = client.post("/v2/jobs", json={**BODY, "seed": 100 + i, **extra})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def wait_all(client, ids: list[str], polls: int = 3000) -> list[dict]:
    for _ in range(polls):
        jobs = [client.get(f"/v2/jobs/{i}").json() for i in ids]
        if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return jobs
        time.sleep(0.1)
    raise AssertionError([j["status"] for j in jobs])


def test_two_replicas_serve_20_jobs_in_batches(server) -> None:
    client, backend = server
    before = len(backend.metrics.sizes)
    ids = submit(client, 20)
    jobs = wait_all(client, ids)
    assert [j["status"] for j in jobs] == ["succeeded"] * 20, [j.get("error") for j in jobs]
    assert [j["seeds"] for j in jobs] == [[100 + i] for i in range(20)]
    data, rate = sf.read(io.BytesIO(client.get(jobs[7]["audio"][0]).content))
    assert rate == 48000 and data.shape == (480000, 2) and abs(data).max() > 0
    sizes = backend.metrics.sizes[before:]
    assert len(sizes) == 20 and max(sizes) > 1 and max(sizes) <= 4  # @serve.batch grouped them, up to the limit
    assert len(backend.metrics.replicas) == 2  # both replicas served
    text = client.get("/metrics").text
    count = float(re.search(r"^songstep_ray_batch_size_count (\S+)$", text, re.M).group(1))
    under_two = float(re.search(r'^songstep_ray_batch_size_bucket\{le="1.0"\} (\S+)$', text, re.M).group(1))
    assert count >= 20 and under_two < count  # the server's metrics show batches larger than one
    assert all(s["batches"] for s in _replica_stats(backend))


def _replica_stats(backend) -> list[dict]:
    seen: dict[str, dict] = {}
    for _ in range(20):
        stats = backend.handle.stats.remote().result()
        seen[stats["replica"]] = stats
        if len(seen) == 2:
            break
    return list(seen.values())


def test_a_replica_killed_mid_job_still_ends_every_job_succeeded(server) -> None:
    from ray import serve

    client, backend = server
    retries = backend.metrics.retries
    ids = submit(client, 8, caption="kill")
    for _ in range(600):  # wait until jobs run on the replicas
        if sum(client.get(f"/v2/jobs/{i}").json()["status"] == "running" for i in ids) >= 4:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # inside a batch now
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if "Synthesizer" in a["name"] and a["namespace"] == "serve"]
    assert len(names) == 2, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    jobs = wait_all(client, ids)
    assert [j["status"] for j in jobs] == ["succeeded"] * 8, [j.get("error") for j in jobs]
    assert backend.metrics.retries > retries  # at least one job was re-sent after its replica died
    assert set(serve.status().applications[backend.config.app_name].deployments) == {"Synthesizer"}


def test_the_planner_pool_serves_sample_mode_and_format(cluster, tiny_tree, tiny_lm_dir, tmp_path_factory) -> None:
    """The LM as its own deployment, called by the synthesizer through its handle (sample mode)
    and by the server's planner routes (format)."""
    config = ServingConfig(model=str(tiny_tree), lm=str(tiny_lm_dir), replicas=1, num_cpus=0.4, lm_num_cpus=0.4,
                           max_batch=2, app_name="songstep-lm", concurrency=2, drain_s=30)
    backend = RayBackend(config, address="auto", lm_max_new_tokens=24)
    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("ray-lm"), lm_max_new_tokens=24)
    with TestClient(create_app(backend.start, settings)) as client:
        lm_name = client.get("/v1/models").json()["data"]["lm_models"][0]["name"]
        assert lm_name == tiny_lm_dir.name or lm_name.endswith(tiny_lm_dir.name)
        data = client.post("/format_input", json={"prompt": "pop rock", "lyrics": "Walking down the street",
                                                  "param_obj": json.dumps({"duration": 30, "bpm": 120})}).json()
        assert data["code"] == 200 and data["data"]["bpm"] == 120 and data["data"]["duration"] == 30
        task = client.post("/release_task", json={"sample_query": "a short jingle", "bpm": 100, "audio_duration": 10,
                                                   "inference_steps": 2, "batch_size": 1, "thinking": False}).json()
        job = wait_all(client, [task["data"]["task_id"]])[0]
        assert job["status"] == "succeeded", job.get("error")
        assert job["result"]["items"][0]["bpm"] == 100 and job["result"]["files"] == ["0.mp3"]
        assert backend.handle.describe.remote().result()["planner"] is True
    from ray import serve

    serve.delete(config.app_name)

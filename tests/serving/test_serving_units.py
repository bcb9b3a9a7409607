"""The Ray backend's pieces without a Ray cluster: options and CLI flags, batch grouping, the
worker's bounded retries after replica deaths (then failed with the reason), user errors failing
without a retry, and the drain on shutdown. The replica handle is a stand-in; the store, worker
and files are the server's real ones."""

from __future__ import annotations

import argparse
import threading
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("prometheus_client")

from ray.exceptions import ActorDiedError  # noqa: E402

from songstep.errors import InvalidRequest  # noqa: E402
from songstep.server.metrics import Metrics  # noqa: E402
from songstep.server.settings import ServerSettings  # noqa: E402
from songstep.server.store import FAILED, SUCCEEDED, Job, SQLiteJobStore  # noqa: E402
from songstep.server.worker import Slot  # noqa: E402
from songstep.serving.backend import BatchMetrics, RayWorker  # noqa: E402
from songstep.serving.config import ServingConfig  # noqa: E402


def test_options_are_coerced_and_checked() -> None:
    config = ServingConfig.from_options({"replicas": "3", "num-gpus": "0.5", "autoscale": "1:4", "offline": "yes",
                                         "max_batch": "6"})
    assert (config.replicas, config.num_gpus, config.autoscale, config.offline) == (3, 0.5, (1, 4), True)
    assert config.in_flight == 2 * 4 * 6  # enough to fill every replica's batch twice
    with pytest.raises(InvalidRequest, match="unknown Ray serving option"):
        ServingConfig.from_options({"replica": "2"})
    with pytest.raises(InvalidRequest, match="autoscale"):
        ServingConfig.from_options({"autoscale": "3:1"})
    with pytest.raises(InvalidRequest, match="num_gpus"):
        ServingConfig(num_gpus=-1)


def test_serve_flags_reach_the_serving_config(tmp_path) -> None:
    from songstep.server.cli import add_parser, settings_from_args
    from songstep.serving.cli import config_from_args

    (tmp_path / "ray.toml").write_text('replicas = 4\nnum_gpus = 0.25\nautoscale = [2, 8]\n')
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "ck", "--lm", "1.7B", "--backend", "ray", "--ray-address", "local",
                              "--ray-config", str(tmp_path / "ray.toml"), "--ray-option", "replicas=5",
                              "--job-store", "postgresql://u@127.0.0.1:5/db"])
    config = config_from_args(args)
    assert (config.model, config.lm, config.replicas, config.num_gpus, config.autoscale) == ("ck", "1.7B", 5, 0.25, (2, 8))
    assert settings_from_args(args).job_store_url == "postgresql://u@127.0.0.1:5/db"
    plain = parser.parse_args(["serve", "--data-dir", str(tmp_path)])
    assert plain.backend == "inprocess" and settings_from_args(plain).job_store_url == str(tmp_path / "jobs.sqlite3")


def test_batch_key_groups_same_task_and_duration_bucket() -> None:
    from songstep.serving.deployments import batch_key

    def key(**fields):
        return batch_key({"fields": fields, "options": {}}, 30.0)

    assert key(duration=10) == key(duration=29.5) != key(duration=31)
    assert key(duration=10) != key(duration=10, task="cover")


class FakeResponse:
    def __init__(self, outcome):
        self.outcome, self.cancelled = outcome, False

    def result(self, timeout_s=None):
        if isinstance(self.outcome, threading.Event):
            if not self.outcome.wait(timeout_s):
                raise TimeoutError
            return _ok()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self):
        self.cancelled = True


def _ok(batch_size=3):
    audio = np.full((1, 2, 4800), 0.25, dtype=np.float32)
    return {"audio": audio, "sample_rate": 48000, "seeds": [7], "params": {"caption": "x", "seconds": 0.1},
            "timings": {"dit": 0.1}, "batch_size": batch_size, "replica": "r1"}


def make_worker(tmp_path, outcomes, **config):
    calls = []

    def remote(payload):
        calls.append(payload)
        return FakeResponse(outcomes.pop(0))

    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    settings = ServerSettings(data_dir=tmp_path)
    backend = SimpleNamespace(config=ServingConfig(retry_backoff_s=0.0, **config), metrics=BatchMetrics(),
                              handle=SimpleNamespace(generate=SimpleNamespace(remote=remote)))
    slot = Slot(name="m", aliases=["m"], pipe=None)
    worker = RayWorker(slot, store, settings, Metrics(lambda: store), backend)
    store.add(Job(id="a" * 32, model="m", spec={"fields": {"caption": "x"}, "options": {"audio_format": "wav"}}))
    return worker, store, calls, backend


def test_a_replica_death_is_retried_and_the_job_succeeds(tmp_path) -> None:
    worker, store, calls, backend = make_worker(tmp_path, [ActorDiedError(), ActorDiedError(), _ok()], max_retries=2)
    worker._run(store.claim("m"))
    job = store.get("a" * 32)
    assert job.status == SUCCEEDED and job.result["seeds"] == [7] and job.result["files"] == ["0.wav"]
    assert len(calls) == 3 and backend.metrics.retries == 2 and backend.metrics.sizes == [3]
    assert (tmp_path / "results" / ("a" * 32) / "0.wav").stat().st_size > 4800 * 4


def test_a_job_whose_replicas_keep_dying_fails_with_the_reason(tmp_path) -> None:
    worker, store, calls, _ = make_worker(tmp_path, [ActorDiedError()] * 3, max_retries=2)
    worker._run(store.claim("m"))
    job = store.get("a" * 32)
    assert job.status == FAILED and len(calls) == 3
    assert "ReplicaLost" in job.error and "died 3 time(s)" in job.error and "after 2 retries" in job.error


def test_a_bad_request_fails_at_once_without_a_retry(tmp_path) -> None:
    bad = {"error": "InvalidRequest: duration must be at most 600", "kind": "user"}
    worker, store, calls, _ = make_worker(tmp_path, [bad, _ok()], max_retries=2)
    worker._run(store.claim("m"))
    job = store.get("a" * 32)
    assert job.status == FAILED and "duration must be at most 600" in job.error and len(calls) == 1


def test_shutdown_drains_the_jobs_in_flight(tmp_path) -> None:
    gate = threading.Event()
    worker, store, calls, _ = make_worker(tmp_path, [gate], concurrency=2, drain_s=30)
    worker.start()
    while store.get("a" * 32).status != "running":
        threading.Event().wait(0.01)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive()  # still waiting for the job in flight
    store.add(Job(id="b" * 32, model="m", spec={"fields": {"caption": "y"}, "options": {}}))
    gate.set()
    stopper.join(30)
    assert store.get("a" * 32).status == SUCCEEDED
    assert store.get("b" * 32).status == "queued"  # nothing new was claimed while draining


def test_a_client_cancel_stops_waiting_and_cancels_the_replica_request(tmp_path) -> None:
    gate = threading.Event()
    worker, store, calls, _ = make_worker(tmp_path, [gate])
    job = store.claim("m")
    responses = []
    remote = worker.backend.handle.generate.remote
    worker.backend.handle.generate.remote = lambda payload: responses.append(remote(payload)) or responses[-1]
    runner = threading.Thread(target=worker._run, args=(job,))
    runner.start()
    while not responses:
        threading.Event().wait(0.01)
    worker.cancel(job.id)
    runner.join(10)
    assert store.get(job.id).status == "cancelled" and store.get(job.id).error == "cancelled by the client"
    assert responses[0].cancelled and len(calls) == 1

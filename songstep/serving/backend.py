"""The REST server's Ray backend: the same routes and job semantics, with the work done by
Ray Serve replicas instead of an in-process pipeline.

`RayBackend.start()` connects to Ray, deploys the application and returns a `RemotePipeline`:
the object the server's app factory takes in place of a `Pipeline` (it answers the model and
validation questions from a replica's `describe()`, and its `make_worker` gives the server a
`RayWorker` for it). The `RayWorker` claims jobs from the same job store as the in-process
worker, keeps several in flight (so replicas can batch them), writes results and progress, and:

- retries a job whose replica died (a Ray actor error) on another replica, up to `max_retries`
  times, then fails it with the reason; the job stays `running` in the store meanwhile, so it is
  never lost (an API crash leaves it to the store's restart recovery);
- fails a job whose request is wrong with the replica's message (no retry: it would fail again);
- on shutdown stops claiming and waits up to `drain_s` for the jobs in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

from songstep.errors import Cancelled, InvalidRequest, SongstepError
from songstep.server.store import Job
from songstep.server.worker import Worker
from songstep.serving.config import ServingConfig

log = logging.getLogger(__name__)
_POLL_S = 0.25
_BEAT_S = 2.0  # seconds between heartbeat (progress) writes while a replica computes


class ReplicaLost(SongstepError):
    """The replicas running a job kept dying; the job was retried up to the limit."""

    http_status = 503


def _retryable() -> tuple[type[BaseException], ...]:
    from ray import exceptions as rx

    return tuple(getattr(rx, name) for name in ("RayActorError", "ActorUnavailableError", "WorkerCrashedError",
                                                "NodeDiedError", "ObjectLostError", "OwnerDiedError")
                 if hasattr(rx, name))


def _is_replica_death(exc: BaseException) -> bool:
    from ray.exceptions import RayTaskError

    retry = _retryable()
    if isinstance(exc, retry):
        return True
    return isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), retry)


class BatchMetrics:
    """Batch sizes and retries, in the server's Prometheus registry and in memory (tests, bench)."""

    def __init__(self, registry: Any = None):
        self.sizes: list[int] = []
        self.replicas: dict[str, int] = {}
        self.retries = 0
        self._lock = threading.Lock()
        self._hist = self._counter = None
        if registry is not None:
            from prometheus_client import Counter, Histogram

            self._hist = Histogram("songstep_ray_batch_size", "Requests in the @serve.batch call a job ran in",
                                   buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=registry)
            self._counter = Counter("songstep_ray_retries", "Jobs re-sent after their replica died",
                                    registry=registry)

    def observe(self, out: dict[str, Any]) -> None:
        with self._lock:
            self.sizes.append(int(out.get("batch_size", 1)))
            replica = str(out.get("replica", "?"))
            self.replicas[replica] = self.replicas.get(replica, 0) + 1
        if self._hist is not None:
            self._hist.observe(int(out.get("batch_size", 1)))

    def retried(self) -> None:
        with self._lock:
            self.retries += 1
        if self._counter is not None:
            self._counter.inc()


class RayWorker(Worker):
    """A `Worker` whose jobs run on Ray Serve replicas, `config.in_flight` at a time."""

    def __init__(self, slot, store, settings, metrics, backend: RayBackend):
        super().__init__(slot, store, settings, metrics)
        self.backend = backend
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.backend.config.in_flight):
            thread = threading.Thread(target=self._loop, name=f"songstep-ray-{self.slot.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Drain: claim nothing more, wait for the jobs in flight (up to `drain_s`). A job still
        running then stays `running` in the store and is recovered by the next start."""
        self._stop.set()
        self.slot.wake.set()
        deadline = time.monotonic() + (self.backend.config.drain_s if timeout is None else timeout)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = sum(t.is_alive() for t in self._threads)
        if left:
            log.warning("shutdown: %d job(s) still in flight after the drain; the next start recovers them", left)

    def _execute(self, job: Job) -> dict[str, Any]:
        spec = job.spec
        options = spec.get("options", {})
        progress = self._progress(job)
        progress("start", 0, 1)
        payload = {"fields": dict(spec["fields"]), "options": options}
        out = self._call(job, payload, progress)
        if "error" in out:
            raise (InvalidRequest if out.get("kind") == "user" else SongstepError)(out["error"])
        progress("save", 0, 1)
        self.backend.metrics.observe(out)
        result = SimpleNamespace(audio=out["audio"], sample_rate=out["sample_rate"], seeds=out["seeds"],
                                 params=out["params"], timings=out["timings"])
        saved = self._save(job, result, options.get("audio_format", "mp3"))
        self.metrics.observe_stages(result.timings)
        return saved

    def _call(self, job: Job, payload: dict[str, Any], progress) -> dict[str, Any]:
        """Send the job to a replica; on a replica death send it again (bounded)."""
        config, failures = self.backend.config, []
        for attempt in range(config.max_retries + 1):
            response = self.backend.handle.generate.remote(payload)
            try:
                return self._wait(response, progress, job.id)
            except Cancelled:
                response.cancel()
                raise
            except Exception as exc:
                if not _is_replica_death(exc):
                    raise
                failures.append(f"{type(exc).__name__}")
                log.warning("replica died under job %s (attempt %d): %s", job.id, attempt + 1, exc)
                if attempt < config.max_retries:
                    self.backend.metrics.retried()
                    time.sleep(config.retry_backoff_s * (attempt + 1))
        raise ReplicaLost(f"the replica running this job died {len(failures)} time(s) "
                          f"({', '.join(failures)}); gave up after {config.max_retries} retries")

    def _wait(self, response, progress, job_id: str) -> dict[str, Any]:
        """The replica's answer. A client cancel is seen within one poll; every `_BEAT_S` the
        progress call checks the job timeout and writes the heartbeat (stage `synthesize`)."""
        last_beat = 0.0
        while True:
            if self._cancel.get(job_id):
                raise Cancelled(self._cancel[job_id])
            if time.monotonic() - last_beat >= _BEAT_S:
                last_beat = time.monotonic()
                progress("synthesize", 0, 1)  # raises Cancelled past the job timeout
            try:
                return response.result(timeout_s=_POLL_S)
            except TimeoutError:
                continue


class RemotePlanner:
    """The planner deployment, with the `Planner` methods the server's routes call directly."""

    def __init__(self, backend: RayBackend):
        from ray import serve

        self._handle = serve.get_deployment_handle("Planner", backend.config.app_name)
        self.name = self._handle.name.remote().result()

    def format(self, *args, **kwargs):
        return self._handle.call.remote("format", args, kwargs).result()

    def create_sample(self, *args, **kwargs):
        return self._handle.call.remote("create_sample", args, kwargs).result()


class RemotePipeline:
    """Stands in for a `Pipeline` in the server: model names and the DiT config (for request
    validation) from a replica; `make_worker` is the server's hook for the Ray worker."""

    def __init__(self, backend: RayBackend, described: dict[str, Any]):
        self.backend = backend
        self.components = SimpleNamespace(variant=described["variant"], folders=described["folders"],
                                          dit=SimpleNamespace(config=described["dit_config"]))
        self.planner = RemotePlanner(backend) if described.get("planner") else None
        self.tier_name, self.max_batch = described["tier"], described["max_batch"]

    def make_worker(self, slot, store, settings, metrics) -> RayWorker:
        if self.backend.metrics._hist is None and metrics is not None:
            self.backend.metrics = BatchMetrics(getattr(metrics, "registry", None))
        return RayWorker(slot, store, settings, metrics, self.backend)

    def run(self, *args, **kwargs):
        raise InvalidRequest("a RemotePipeline runs jobs through its RayWorker, not in process")


class RayBackend:
    """Connects to Ray (`address`: "auto" joins a running cluster, "local" starts one in this
    process), deploys the songstep application and hands out its handle."""

    def __init__(self, config: ServingConfig, address: str = "auto", *, lm_max_new_tokens: int | None = None,
                 init_kwargs: dict[str, Any] | None = None):
        self.config, self.address = config, address
        self.lm_max_new_tokens, self.init_kwargs = lm_max_new_tokens, dict(init_kwargs or {})
        self.handle: Any = None
        self.metrics = BatchMetrics()
        self._started_ray = False

    def start(self) -> RemotePipeline:
        import ray
        from ray import serve

        from songstep.serving.deployments import build_app

        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address == "local":
                ray.init(**kwargs)
            else:
                ray.init(address=self.address, **kwargs)
            self._started_ray = True
        if self.config.deploy:
            serve.start(proxy_location="Disabled")  # no Serve HTTP proxy: the songstep API is the front door
            app = build_app(self.config, lm_max_new_tokens=self.lm_max_new_tokens)
            self.handle = serve.run(app, name=self.config.app_name, route_prefix=None)
        else:
            self.handle = serve.get_app_handle(self.config.app_name)
        described = self.handle.describe.remote().result()
        log.info("ray backend ready: %s replicas of %s (tier %s, batch limit %d)",
                 self.config.autoscale or self.config.replicas, described["variant"], described["tier"],
                 described["max_batch"])
        return RemotePipeline(self, described)

    def shutdown(self) -> None:
        """Remove the application (its replicas finish their requests first) and, when this
        process started Ray, stop it."""
        import ray
        from ray import serve

        serve.delete(self.config.app_name)
        if self._started_ray:
            serve.shutdown()
            ray.shutdown()

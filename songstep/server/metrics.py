"""Prometheus metrics of one app (its own registry, no globals): queue depth and jobs by state
read from the store at scrape time, job and stage timings, GPU memory."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from songstep.server.store import QUEUED, JobStore

_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _StoreCollector:
    def __init__(self, store_ref, slots_ref):
        self._store, self._slots = store_ref, slots_ref

    def collect(self):
        store: JobStore | None = self._store()
        jobs = GaugeMetricFamily("songstep_jobs", "Jobs in the store by state", labels=["state"])
        depth = GaugeMetricFamily("songstep_queue_depth", "Jobs waiting in the queue")
        if store is not None:
            counts = store.counts()
            for state, n in counts.items():
                jobs.add_metric([state], n)
            depth.add_metric([], counts.get(QUEUED, 0))
        yield jobs
        yield depth
        gpu = GaugeMetricFamily("songstep_gpu_memory_bytes", "GPU memory allocated by torch", labels=["device"])
        for device, used in _gpu_memory():
            gpu.add_metric([device], used)
        yield gpu


def _gpu_memory() -> list[tuple[str, float]]:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return []
    if not torch.cuda.is_available():
        return []
    return [(f"cuda:{i}", float(torch.cuda.memory_allocated(i))) for i in range(torch.cuda.device_count())]


class Metrics:
    def __init__(self, store_ref, slots_ref=lambda: []):
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(store_ref, slots_ref))
        self.jobs_total = Counter("songstep_jobs_finished", "Finished jobs by final state", ["state"],
                                  registry=self.registry)
        self.job_seconds = Histogram("songstep_job_seconds", "Wall time of a job in the worker",
                                     buckets=_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram("songstep_stage_seconds", "Time of one pipeline stage", ["stage"],
                                       buckets=_BUCKETS, registry=self.registry)
        self.rejected = Counter("songstep_rejected_submits", "Submits refused because the queue was full",
                                registry=self.registry)

    def count_job(self, state: str) -> None:
        self.jobs_total.labels(state).inc()

    def observe_job(self, seconds: float) -> None:
        self.job_seconds.observe(seconds)

    def observe_stages(self, timings: dict[str, Any] | None) -> None:
        for stage, seconds in (timings or {}).items():
            if isinstance(seconds, int | float):
                self.stage_seconds.labels(stage).observe(float(seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)

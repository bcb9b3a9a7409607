"""The job service: the loaded models (slots), their workers, the store and the file rules.

Files are served only by job id: a result is `<results dir>/<job id>/<n>.<ext>` and is found
through the job's stored result, never through a path a client sends.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from songstep.errors import InvalidRequest, ModelNotFound
from songstep.server.metrics import Metrics
from songstep.server.settings import ServerSettings
from songstep.server.store import QUEUED, SUCCEEDED, Job, JobStore, QueueFull, new_job_id
from songstep.server.worker import Slot, Worker

log = logging.getLogger(__name__)
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_FILE = re.compile(r"^\d{1,2}\.(mp3|wav|flac|ogg)$")
UPSTREAM_STATUS = {"queued": 0, "running": 0, "succeeded": 1, "failed": 2, "cancelled": 2}


class AccessDenied(InvalidRequest):
    """A file reference that is not one of this server's stored results."""

    http_status = 403


class JobService:
    def __init__(self, settings: ServerSettings, store: JobStore, slots: list[Slot], metrics: Metrics):
        self.settings, self.store, self.slots, self.metrics = settings, store, slots, metrics
        self.workers = {slot.name: Worker(slot, store, settings, metrics) for slot in slots}

    def start(self) -> dict[str, int]:
        recovered = self.store.recover(requeue=self.settings.on_restart == "requeue",
                                       max_attempts=self.settings.max_attempts)
        if any(recovered.values()):
            log.warning("recovered interrupted jobs: %s", recovered)
        for worker in self.workers.values():
            worker.start()
        return recovered

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()

    # -- models ----------------------------------------------------------------------------------
    @property
    def default(self) -> Slot:
        return next((s for s in self.slots if s.is_default), self.slots[0])

    def slot_for(self, model: str | None) -> Slot:
        """The slot serving `model` (None: the default). A model that is not loaded is an error,
        never a silent fallback to another model."""
        if not model:
            return self.default
        wanted = model.strip().split("/")[-1]
        for slot in self.slots:
            if wanted in slot.aliases:
                return slot
        loaded = ", ".join(s.name for s in self.slots)
        raise ModelNotFound(f"model {model!r} is not loaded on this server (loaded: {loaded}); "
                            "restart it with that --model or omit `model`")

    def check_lm(self, slot: Slot, lm_model: str | None) -> None:
        if not lm_model:
            return
        loaded = slot.lm_model
        if loaded is None or Path(lm_model).name not in (loaded, Path(loaded).name):
            raise ModelNotFound(f"planner LM {lm_model!r} is not loaded (loaded: {loaded or 'none'}); "
                                "omit lm_model_path or start the server with that LM")

    # -- jobs --------------------------------------------------------------------------------------
    def new_id(self) -> str:
        return new_job_id()

    def submit(self, slot: Slot, spec: dict[str, Any], *, job_id: str | None = None,
               idempotency_key: str | None = None) -> Job:
        """Validate, then write the job (before any reply) and wake the model's worker.
        Raises `QueueFull` when `queue_size` jobs wait already."""
        self.validate(slot, spec)
        job = Job(id=job_id or new_job_id(), model=slot.name, spec=spec, idempotency_key=idempotency_key)
        try:
            stored = self.store.add(job, queue_limit=self.settings.queue_size)
        except QueueFull:
            self.metrics.rejected.inc()
            raise
        slot.wake.set()
        log.info("job queued", extra={"job_id": stored.id, "model": slot.name})
        return stored

    def validate(self, slot: Slot, spec: dict[str, Any]) -> None:
        """The request's static checks against the model, before the job is accepted."""
        from songstep.pipeline.plan import resolve
        from songstep.server.schemas import to_request

        options = spec.get("options", {})
        self.check_lm(slot, options.get("lm_model"))
        if (options.get("sample_mode") or options.get("use_format")) and getattr(slot.pipe, "planner", None) is None:
            raise InvalidRequest("sample_mode / sample_query and use_format need a planner LM; this server has none")
        request = to_request(spec["fields"])
        config = getattr(getattr(getattr(slot.pipe, "components", None), "dit", None), "config", None)
        if config is not None:
            resolve(request, config, getattr(slot.pipe.components, "variant", None))

    def cancel(self, job_id: str) -> Job | None:
        job = self.store.get(job_id)
        if job is None or job.finished:
            return job
        if job.status == QUEUED and self.store.cancel_queued(job_id):
            return self.store.get(job_id)
        worker = self.workers.get(job.model)
        if worker is not None:
            worker.cancel(job_id)
        return self.store.get(job_id)

    async def wait(self, job_id: str, timeout: float, poll: float = 0.2) -> Job | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            job = self.store.get(job_id)
            if job is None or job.finished or loop.time() >= deadline:
                return job
            await asyncio.sleep(poll)

    def stats(self) -> dict[str, Any]:
        counts = self.store.counts()
        avg = self.store.average_seconds()
        return {
            "jobs": {"total": sum(counts.values()), "queued": counts["queued"], "running": counts["running"],
                     "succeeded": counts["succeeded"], "failed": counts["failed"] + counts["cancelled"]},
            "queue_size": counts["queued"],
            "queue_maxsize": self.settings.queue_size,
            "avg_job_seconds": round(avg, 3) if avg is not None else 0.0,
        }

    # -- files -------------------------------------------------------------------------------------
    def result_file(self, job_id: str, name: str) -> Path:
        """The stored file `name` of job `job_id`; 403 for anything that is not one."""
        if not _JOB_ID.match(job_id or "") or not _FILE.match(name or ""):
            raise AccessDenied("access denied: files are served only by job id and result name")
        job = self.store.get(job_id)
        if job is None or job.status != SUCCEEDED or name not in (job.result or {}).get("files", []):
            raise ModelNotFound(f"no result {name!r} for job {job_id}")
        path = self.settings.results_dir / job_id / name
        if not path.is_file():
            raise ModelNotFound(f"the result {name!r} of job {job_id} was deleted (retention limit)")
        return path

    def file_ref(self, ref: str) -> Path:
        """A client reference to an earlier result (`/v1/audio?path=<id>/<n>.mp3`, `<id>/<n>.mp3`
        or `<id>` for its first take) → its stored path. Server paths are refused."""
        text = (ref or "").strip()
        if text.startswith(("/v1/audio", "http://", "https://")):
            text = (parse_qs(urlparse(text).query).get("path") or [""])[0]
        job_id, _, name = text.partition("/")
        if not name and _JOB_ID.match(job_id):
            job = self.store.get(job_id)
            name = ((job.result or {}).get("files") or [""])[0] if job else ""
        return self.result_file(job_id, name)

    def audio_url(self, job_id: str, name: str) -> str:
        return f"/v1/audio?path={job_id}/{name}"

"""One worker thread per loaded pipeline: claims queued jobs from the store, runs them with
progress and cancellation, writes the results under `<data dir>/results/<job id>/`.

Each job stands alone: its request is built from the stored job record alone, its seeds are its
own, and nothing from an earlier job reaches it.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from songstep import audio
from songstep.errors import Cancelled, InvalidRequest, SongstepError
from songstep.server.schemas import to_request
from songstep.server.settings import ServerSettings
from songstep.server.store import CANCELLED, FAILED, SUCCEEDED, Job, JobStore

log = logging.getLogger(__name__)
_PROGRESS_EVERY = 0.25  # seconds between progress writes to the store


def model_names(pipe: Any) -> tuple[str, list[str]]:
    """(name, aliases) of a pipeline: the DiT folder name (e.g. `acestep-v15-turbo`) and its variant."""
    components = getattr(pipe, "components", None)
    variant = str(getattr(components, "variant", "") or "default")
    folders = getattr(components, "folders", None) or {}
    folder = (folders.get(variant) or folders.get("dit")) if isinstance(folders, dict) else None
    name = Path(folder).name if folder else variant
    return name, sorted({name, variant})


def lm_name(pipe: Any) -> str | None:
    planner = getattr(pipe, "planner", None)
    return getattr(planner, "name", None) if planner is not None else None


@dataclass
class Slot:
    """A loaded pipeline, its lock (held while it computes) and its worker thread."""

    name: str
    aliases: list[str]
    pipe: Any
    is_default: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    current: str | None = None

    @property
    def lm_model(self) -> str | None:
        return lm_name(self.pipe)


class Worker:
    """Runs the jobs of one slot, one at a time, until `stop()`."""

    def __init__(self, slot: Slot, store: JobStore, settings: ServerSettings, metrics: Any):
        self.slot, self.store, self.settings, self.metrics = slot, store, settings, metrics
        self._stop = threading.Event()
        self._cancel: dict[str, str] = {}  # job id → reason
        self._cancel_lock = threading.Lock()

    def start(self) -> None:
        self.slot.thread = threading.Thread(target=self._loop, name=f"songstep-worker-{self.slot.name}", daemon=True)
        self.slot.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current job (a job still running at exit stays `running` in the store
        and is recovered by the next start)."""
        self._stop.set()
        self.slot.wake.set()
        if self.slot.thread is not None:
            self.slot.thread.join(timeout)

    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> None:
        with self._cancel_lock:
            self._cancel[job_id] = reason

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim(self.slot.name)
            if job is None:
                self.slot.wake.wait(1.0)
                self.slot.wake.clear()
                continue
            self.slot.current = job.id
            try:
                self._run(job)
            finally:
                self.slot.current = None
                with self._cancel_lock:
                    self._cancel.pop(job.id, None)
                self._retire()

    def _run(self, job: Job) -> None:
        started = time.perf_counter()
        log.info("job started", extra={"job_id": job.id, "model": self.slot.name, "attempt": job.attempts})
        try:
            result = self._execute(job)
        except Cancelled as exc:
            reason = self._cancel.get(job.id) or str(exc) or "cancelled"
            status = CANCELLED if reason == "cancelled by the client" else FAILED
            self._finish(job, status, error=reason)
        except SongstepError as exc:
            self._finish(job, FAILED, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug or an unexpected library error: the job fails, the worker lives
            log.exception("job crashed", extra={"job_id": job.id})
            self._finish(job, FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
        else:
            self._finish(job, SUCCEEDED, result=result)
        finally:
            self.metrics.observe_job(time.perf_counter() - started)

    def _finish(self, job: Job, status: str, *, result: dict | None = None, error: str | None = None) -> None:
        changed = self.store.finish(job.id, status, result=result, error=error)
        self.metrics.count_job(status)
        level = logging.INFO if status == SUCCEEDED else logging.WARNING
        log.log(level, "job %s", status, extra={"job_id": job.id, "error": error, "stored": changed})

    def _progress(self, job: Job):
        deadline = time.monotonic() + self.settings.job_timeout
        last = [0.0, ""]

        def progress(stage: str, done: int, total: int) -> None:
            reason = self._cancel.get(job.id)
            if reason:
                raise Cancelled(reason)
            if time.monotonic() > deadline:
                raise Cancelled(f"timed out after {self.settings.job_timeout:g} s")
            now = time.monotonic()
            if stage != last[1] or now - last[0] >= _PROGRESS_EVERY or done == total:
                last[0], last[1] = now, stage
                self.store.set_progress(job.id, stage, done / total if total else 0.0)

        return progress

    def _execute(self, job: Job) -> dict[str, Any]:
        spec, pipe = job.spec, self.slot.pipe
        options = spec.get("options", {})
        progress = self._progress(job)
        progress("start", 0, 1)
        with self.slot.lock:
            fields = self._planned_fields(dict(spec["fields"]), options)
            request = to_request(fields)
            result = pipe.run(request, progress=progress, **self._run_kwargs(options))
        progress("save", 0, 1)
        out = self._save(job, result, options.get("audio_format", "mp3"))
        self.metrics.observe_stages(result.timings)
        return out

    def _run_kwargs(self, options: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"thinking": bool(options.get("thinking", False))}
        if options.get("normalize") is False:
            kwargs["normalize"] = False
        if options.get("plan") and getattr(self.slot.pipe, "planner", None) is not None:
            from songstep.planner import PlanOptions

            kwargs["plan_options"] = PlanOptions().replace(**options["plan"])
        return kwargs

    def _planned_fields(self, fields: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        """Upstream's sample mode (a description → caption, lyrics, metas) and format mode
        (caption and lyrics enhanced by the LM) run before the request is built."""
        pipe = self.slot.pipe
        if not (options.get("sample_mode") or options.get("use_format")):
            return fields
        if getattr(pipe, "planner", None) is None:
            raise InvalidRequest("sample_mode and use_format need a planner LM; start the server with one")
        lang = fields.get("language") if fields.get("language") not in (None, "unknown") else None
        common = dict(language=lang, seed=fields.get("seed"), max_new_tokens=self.settings.lm_max_new_tokens)
        if options.get("sample_mode"):
            desc = pipe.planner.create_sample(options.get("sample_query") or fields.get("caption", ""),
                                              instrumental=bool(fields.get("instrumental")), **common)
        else:
            desc = pipe.planner.format(fields.get("caption", ""), fields.get("lyrics", ""), bpm=fields.get("bpm"),
                                       keyscale=fields.get("keyscale"), timesignature=fields.get("timesignature"),
                                       duration=fields.get("duration"), **common)
        planned = desc.to_request()
        for name in ("caption", "lyrics", "bpm", "keyscale", "timesignature", "duration", "language"):
            value = getattr(planned, name)
            if value not in (None, "") and (fields.get(name) in (None, "", "unknown") or name in ("caption", "lyrics")):
                fields[name] = value
        return fields

    def _save(self, job: Job, result: Any, fmt: str) -> dict[str, Any]:
        folder = self.settings.results_dir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        params = json.loads(json.dumps(result.params, default=str))
        items = params.get("items") or [params] * len(result.seeds)
        files = []
        for i, seed in enumerate(result.seeds):
            item = {**params, **items[i], "seed": seed}
            item.pop("items", None)
            path = audio.save_audio(folder / f"{i}.{fmt}", result.audio[i], result.sample_rate, fmt, params=item)
            files.append(path.name)
        return {
            "files": files,
            "seeds": list(result.seeds),
            "items": [_metas(items[i]) for i in range(len(files))],
            "caption": params.get("caption", ""),
            "lyrics": params.get("lyrics", ""),
            "dit_model": self.slot.name,
            "lm_model": self.slot.lm_model,
            "timings": {k: float(v) for k, v in (result.timings or {}).items()},
            "sample_rate": result.sample_rate,
            "duration": float(result.audio.shape[-1]) / result.sample_rate,
        }

    def _retire(self) -> None:
        """Keep the newest `keep_results` finished jobs; delete older ones and their files."""
        old = self.store.expired(self.settings.keep_results)
        for job_id in old:
            shutil.rmtree(self.settings.results_dir / job_id, ignore_errors=True)
            shutil.rmtree(self.settings.uploads_dir / job_id, ignore_errors=True)
        if old:
            self.store.delete(old)
            log.info("retention: deleted %d old job(s)", len(old))


def _metas(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "caption": item.get("caption", ""),
        "bpm": item.get("bpm"),
        "duration": item.get("seconds") or item.get("duration"),
        "genres": item.get("genres") or "",
        "keyscale": item.get("keyscale") or "",
        "timesignature": item.get("timesignature") or "",
        "language": item.get("language") or "",
    }

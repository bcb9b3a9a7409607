"""The UI's way to the server's job queue: no model work happens in the UI layer.

`host_app` builds the FastAPI app the Gradio UI is mounted on. With `api=True` it is the REST
server's own app (`songstep.server.app.create_app`: every route, the keys, the job store), as
upstream's `--enable-api` does; without it, a bare app whose lifespan starts the same job service
(SQLite store under the data dir, one worker thread per pipeline). Either way the UI submits its
requests to `app.state.service`, so UI generations and REST jobs share one queue and the UI can
show a job's place in it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from songstep.errors import InvalidAudio, InvalidRequest
from songstep.server.settings import ServerSettings
from songstep.server.store import FINISHED, Job


def host_app(pipe: Any, settings: ServerSettings, *, api: bool):
    """The FastAPI app serving `pipe` (already loaded) through the job service."""
    if api:
        from songstep.server.app import create_app

        return create_app(lambda: pipe, settings)
    from fastapi import FastAPI

    from songstep.server.app import serving
    from songstep.server.metrics import Metrics
    from songstep.server.worker import Slot, model_names

    def slots() -> list[Slot]:
        name, aliases = model_names(pipe)
        return [Slot(name=name, aliases=aliases, pipe=pipe, is_default=True)]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with serving(app, settings, slots):
            yield

    app = FastAPI(title="songstep UI", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics(lambda: getattr(app.state, "store", None))
    return app


@dataclass
class JobView:
    """What the UI shows of a job while it waits or runs."""

    status: str
    position: int
    stage: str
    progress: float
    job: Job


class Jobs:
    """Submit, watch and read the UI's jobs through the app's job service."""

    def __init__(self, app: Any, pipe: Any):
        self.app, self.pipe = app, pipe

    @property
    def service(self):
        service = getattr(self.app.state, "service", None)
        if service is None:
            raise InvalidRequest("the job service is not running yet; try again in a moment")
        return service

    @property
    def settings(self) -> ServerSettings:
        return self.app.state.settings

    @property
    def has_planner(self) -> bool:
        return getattr(self.pipe, "planner", None) is not None

    @property
    def variant(self) -> str:
        return str(getattr(getattr(self.pipe, "components", None), "variant", "") or "?")

    def new_id(self) -> str:
        return self.service.new_id()

    def stage_audio(self, path: str | Path, job_id: str, name: str) -> str:
        """Copy an uploaded or chosen file into the job's upload folder and check that it decodes
        as audio (`InvalidAudio` with a readable reason when it does not)."""
        from songstep.server.uploads import checked_audio

        folder = self.settings.uploads_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        shutil.copyfile(path, target)
        try:
            return str(checked_audio(target, self.settings))
        except InvalidAudio as exc:  # the reason, without the server's file path
            raise InvalidAudio(f"{name}: {str(exc).split(' (')[0]}") from None

    def submit(self, fields: dict[str, Any], options: dict[str, Any], job_id: str) -> Job:
        service = self.service
        return service.submit(service.default, {"fields": fields, "options": options}, job_id=job_id)

    def view(self, job_id: str) -> JobView:
        job = self.service.store.get(job_id)
        if job is None:
            raise InvalidRequest(f"job {job_id} is gone (deleted by the retention limit)")
        position = self.service.store.position(job_id) if job.status == "queued" else 0
        return JobView(job.status, position, job.stage, job.progress, job)

    def wait(self, job_id: str, poll: float = 0.25):
        """Yield a `JobView` per poll until the job is finished (the last one is final)."""
        while True:
            view = self.view(job_id)
            yield view
            if view.status in FINISHED:
                return
            time.sleep(poll)

    def files(self, job: Job) -> list[Path]:
        return [self.service.result_file(job.id, name) for name in (job.result or {}).get("files", [])]

    def cancel(self, job_id: str) -> None:
        self.service.cancel(job_id)

    @property
    def lock(self):
        """Held while the pipeline computes (LoRA changes and alignment take it too)."""
        return self.service.default.lock

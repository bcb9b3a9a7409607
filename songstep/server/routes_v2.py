"""The job API (`/v2`): songstep's own field names, plain JSON, documented in /docs.

    POST /v2/jobs                       submit (header Idempotency-Key: the same key → the same job)
    GET  /v2/jobs?status=&limit=&offset= list, newest first
    GET  /v2/jobs/{id}                  one job
    POST /v2/jobs/{id}/cancel           cancel a queued or running job
    GET  /v2/jobs/{id}/audio/{n}        take n's audio file
    GET  /v2/jobs/{id}/events           progress as server-sent events until the job ends
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from songstep.errors import InvalidRequest, ModelNotFound
from songstep.server.schemas import Envelope
from songstep.server.service import JobService
from songstep.server.store import STATES, Job

router = APIRouter(prefix="/v2", tags=["jobs"])
_ERRORS = {code: {"model": Envelope} for code in (400, 401, 403, 404, 409, 422, 429)}
JobId = Path(..., pattern=r"^[0-9a-f]{32}$")


class JobRequest(BaseModel):
    """A generation request under songstep's own names (`GenerationRequest`), plus the model, the
    planner switch and the output format. `source_audio` / `reference_audio` name an earlier
    result (`<job id>` or `<job id>/<n>.<ext>`); uploads go through `/release_task`."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field("text2music", max_length=32)
    caption: str = Field("", max_length=4096)
    lyrics: str = Field("", max_length=16384)
    instrumental: bool = False
    language: str = Field("unknown", max_length=16)
    duration: float | None = Field(None, ge=1, le=600)
    bpm: int | None = Field(None, ge=30, le=300)
    keyscale: str | None = Field(None, max_length=32)
    timesignature: str | None = Field(None, max_length=8)
    tracks: list[str] = Field(default_factory=list, max_length=12)
    source_audio: str | None = Field(None, max_length=200)
    reference_audio: str | None = Field(None, max_length=200)
    repaint_start: float = 0.0
    repaint_end: float | None = None
    repaint_strength: float = Field(0.5, ge=0, le=1)
    strength: float = Field(1.0, ge=0, le=1)
    cover_noise_strength: float = Field(0.0, ge=0, le=1)
    audio_codes: str | None = None
    steps: int | None = Field(None, ge=1, le=200)
    shift: float | None = Field(None, gt=0, le=10)
    guidance: float | None = Field(None, ge=0, le=50)
    guidance_method: str = Field("apg", max_length=16)
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    solver: Literal["euler", "heun"] = "euler"
    method: Literal["ode", "sde"] = "ode"
    timesteps: list[float] | None = Field(None, max_length=200)
    dcw: bool = True
    seed: int | None = Field(None, ge=0, lt=2**63)
    batch: int = Field(1, ge=1, le=8)
    retake_seed: int | None = Field(None, ge=0, lt=2**63)
    retake_variance: float = Field(0.0, ge=0, le=1)
    model: str | None = Field(None, max_length=200, description="a loaded model's name; default: the first")
    thinking: bool = True
    audio_format: Literal["mp3", "wav", "flac", "ogg"] = "flac"

    def spec(self, service: JobService) -> dict[str, Any]:
        fields = self.model_dump(exclude={"model", "thinking", "audio_format"})
        for name in ("source_audio", "reference_audio"):
            if fields[name]:
                fields[name] = str(service.file_ref(fields[name]))
        return {"fields": fields, "options": {"thinking": self.thinking, "audio_format": self.audio_format}}


class JobView(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    stage: str = ""
    progress: float = 0.0
    queue_position: int = 0
    attempts: int = 0
    error: str | None = None
    audio: list[str] = Field(default_factory=list, description="download URLs, one per take")
    seeds: list[int] = Field(default_factory=list)
    result: dict[str, Any] | None = None


class JobList(BaseModel):
    jobs: list[JobView]
    counts: dict[str, int]


def _service(request: Request) -> JobService:
    return request.app.state.service


def view(job: Job, service: JobService) -> JobView:
    result = job.result or {}
    files = result.get("files", [])
    return JobView(
        id=job.id, status=job.status, model=job.model, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, stage=job.stage, progress=job.progress,
        queue_position=service.store.position(job.id) if job.status == "queued" else 0,
        attempts=job.attempts, error=job.error, audio=[f"/v2/jobs/{job.id}/audio/{i}" for i in range(len(files))],
        seeds=result.get("seeds", []), result=job.result,
    )


def _get(service: JobService, job_id: str) -> Job:
    job = service.store.get(job_id)
    if job is None:
        raise ModelNotFound(f"no job {job_id}")
    return job


@router.post("/jobs", status_code=202, response_model=JobView, responses=_ERRORS)
async def submit(request: Request, body: JobRequest,
                 idempotency_key: str | None = Header(None, max_length=200)) -> JobView:
    """Queue a job; it is stored before this answers. 429 (Retry-After) when the queue is full."""
    service = _service(request)
    slot = service.slot_for(body.model)
    spec = body.spec(service)
    job = await asyncio.to_thread(service.submit, slot, spec, idempotency_key=idempotency_key or None)
    return await asyncio.to_thread(view, job, service)


@router.get("/jobs", response_model=JobList, responses=_ERRORS)
async def list_jobs(request: Request, status: Literal[STATES] | None = None,  # type: ignore[valid-type]
                    limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=10**9)) -> JobList:
    service = _service(request)

    def collect() -> JobList:
        jobs = service.store.list(status=status, limit=limit, offset=offset)
        return JobList(jobs=[view(j, service) for j in jobs], counts=service.store.counts())

    return await asyncio.to_thread(collect)


@router.get("/jobs/{job_id}", response_model=JobView, responses=_ERRORS)
async def get_job(request: Request, job_id: str = JobId) -> JobView:
    service = _service(request)
    return await asyncio.to_thread(lambda: view(_get(service, job_id), service))


@router.post("/jobs/{job_id}/cancel", response_model=JobView, responses=_ERRORS)
async def cancel_job(request: Request, job_id: str = JobId) -> JobView:
    """Cancel a queued job at once, a running one at its next step; 409 when it already ended."""
    service = _service(request)
    job = _get(service, job_id)
    if job.finished:
        raise _Conflict(f"job {job_id} already ended ({job.status})")
    await asyncio.to_thread(service.cancel, job_id)
    return view(_get(service, job_id), service)


class _Conflict(InvalidRequest):
    http_status = 409


@router.get("/jobs/{job_id}/audio/{index}", responses={200: {"content": {"audio/mpeg": {}}}, **_ERRORS})
async def download(request: Request, job_id: str = JobId, index: int = Path(..., ge=0, le=7)) -> FileResponse:
    service = _service(request)
    job = _get(service, job_id)
    files = (job.result or {}).get("files", [])
    if index >= len(files):
        raise ModelNotFound(f"job {job_id} has no take {index} ({job.status}, {len(files)} take(s))")
    path = service.result_file(job_id, files[index])
    return FileResponse(path, filename=f"{job_id}-{path.name}")


@router.get("/jobs/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS})
async def events(request: Request, job_id: str = JobId) -> StreamingResponse:
    """Server-sent events: `progress` ({status, stage, progress, queue_position}) whenever it
    changes, then one `done` event with the final job."""
    service = _service(request)
    _get(service, job_id)

    async def stream():
        last = None
        while True:
            job = await asyncio.to_thread(service.store.get, job_id)
            if job is None:
                yield _sse("done", {"id": job_id, "status": "failed", "error": "the job was deleted"})
                return
            data = await asyncio.to_thread(view, job, service)
            if job.finished:
                yield _sse("done", data.model_dump())
                return
            state = (data.status, data.stage, round(data.progress, 3), data.queue_position)
            if state != last:
                last = state
                yield _sse("progress", {k: getattr(data, k) for k in ("status", "stage", "progress", "queue_position")})
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"

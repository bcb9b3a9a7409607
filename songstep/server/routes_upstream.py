"""Upstream ACE-Step's API routes, same field names, envelope and status codes.

Jobs: `status` 0 = queued or running, 1 = succeeded, 2 = failed (or cancelled). Files are
`/v1/audio?path=<job id>/<n>.<ext>`: the path names a stored result, never a server path.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, ValidationError

from songstep.errors import InvalidRequest
from songstep.server import examples
from songstep.server.schemas import (
    CreateSampleParams,
    Envelope,
    FormatInputParams,
    QueryResultParams,
    RandomSampleParams,
    ReleaseTaskParams,
    description_data,
    envelope,
)
from songstep.server.service import UPSTREAM_STATUS, JobService
from songstep.server.uploads import save_upload

router = APIRouter(tags=["upstream"])
_UPLOAD_FIELDS = {"reference_audio": "reference_audio", "ref_audio": "reference_audio",
                  "src_audio": "source_audio", "ctx_audio": "source_audio"}


def _body_doc(model: type[BaseModel], files: bool = False) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    schema.pop("title", None)
    content: dict[str, Any] = {"application/json": {"schema": schema},
                               "application/x-www-form-urlencoded": {"schema": schema}}
    if files:
        props = {**schema.get("properties", {}),
                 **{name: {"type": "string", "format": "binary"} for name in _UPLOAD_FIELDS}}
        content["multipart/form-data"] = {"schema": {**schema, "properties": props}}
    return {"requestBody": {"content": content, "required": False}}


async def read_body(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JSON object, or form / multipart fields (files apart)."""
    ctype = (request.headers.get("content-type") or "").lower()
    if "json" in ctype or not ctype:
        raw = await request.body()
        if not raw.strip():
            return {}, {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidRequest("JSON payload must be an object")
        return body, {}
    if "form" in ctype:
        form = await request.form()
        fields, files = {}, {}
        for key, value in form.multi_items():
            if hasattr(value, "filename") and hasattr(value, "read"):
                files[key] = value
            else:
                fields[key] = value
        return fields, files
    raise InvalidRequest(f"unsupported content type {ctype!r}: send JSON, form or multipart")


def parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


def _service(request: Request) -> JobService:
    return request.app.state.service


async def _attach_audio(service: JobService, job_id: str, params: ReleaseTaskParams, files: dict,
                        fields: dict[str, Any]) -> None:
    folder = service.settings.uploads_dir / job_id
    for form_name, field_name in _UPLOAD_FIELDS.items():
        upload = files.get(form_name)
        if upload is not None and not fields.get(field_name):
            fields[field_name] = str(await save_upload(upload, folder, field_name, service.settings))
    refs = {"source_audio": params.src_audio_path, "reference_audio": params.reference_audio_path}
    for field_name, ref in refs.items():
        if ref and not fields.get(field_name):
            fields[field_name] = str(service.file_ref(ref))


@router.post("/release_task", response_model=Envelope, openapi_extra=_body_doc(ReleaseTaskParams, files=True))
async def release_task(request: Request) -> dict:
    """Submit a generation job (JSON, form or multipart with `src_audio`/`ctx_audio` and
    `reference_audio`/`ref_audio` files). Answers `{task_id, status "queued", queue_position}`;
    429 with Retry-After when the queue is full."""
    service = _service(request)
    body, files = await read_body(request)
    params: ReleaseTaskParams = parse(ReleaseTaskParams, body)
    slot = service.slot_for(params.model)
    job_id = service.new_id()
    try:
        fields = params.generation_fields()
        await _attach_audio(service, job_id, params, files, fields)
        spec = {"fields": fields, "options": params.job_options()}
        job = await asyncio.to_thread(service.submit, slot, spec, job_id=job_id)
    except BaseException:
        shutil.rmtree(service.settings.uploads_dir / job_id, ignore_errors=True)
        raise
    position = await asyncio.to_thread(service.store.position, job.id)
    return envelope({"task_id": job.id, "status": "queued", "queue_position": position})


def _take(job, i: int, name: str, service: JobService) -> dict[str, Any]:
    result = job.result or {}
    meta = (result.get("items") or [{}] * (i + 1))[i]
    seeds = result.get("seeds", [])
    return {
        "file": service.audio_url(job.id, name), "wave": "", "status": 1, "create_time": int(job.created_at),
        "env": "songstep", "prompt": meta.get("caption") or result.get("caption", ""),
        "lyrics": result.get("lyrics", ""),
        "metas": {k: meta.get(k) for k in ("bpm", "duration", "genres", "keyscale", "timesignature")},
        "generation_info": f"{len(seeds)} take(s), {result.get('duration', 0):.1f} s, "
                           f"{result.get('timings', {}).get('total', 0):.1f} s compute",
        "seed_value": ",".join(str(s) for s in seeds), "lm_model": result.get("lm_model"),
        "dit_model": result.get("dit_model"),
    }


def upstream_item(job, service: JobService) -> dict[str, Any]:
    status = UPSTREAM_STATUS[job.status]
    if status == 1:
        takes = [_take(job, i, name, service) for i, name in enumerate(job.result.get("files", []))]
    else:
        takes = [{"file": "", "wave": "", "status": status, "create_time": int(job.created_at), "env": "songstep",
                  "prompt": "", "lyrics": "", "metas": {}, "progress": job.progress, "stage": job.stage or job.status,
                  "error": job.error}]
    item = {"task_id": job.id, "result": json.dumps(takes, ensure_ascii=False), "status": status,
            "progress_text": f"{job.status} {job.stage} {job.progress:.0%}".strip()}
    if job.status == "queued":
        item["queue_position"] = service.store.position(job.id)
    return item


@router.post("/query_result", response_model=Envelope, openapi_extra=_body_doc(QueryResultParams))
async def query_result(request: Request) -> dict:
    """Status and results of several jobs (`task_id_list`). `result` is a JSON string, as upstream."""
    service = _service(request)
    body, _ = await read_body(request)
    params: QueryResultParams = parse(QueryResultParams, body)

    def collect() -> list[dict[str, Any]]:
        out = []
        for task_id in params.task_id_list:
            job = service.store.get(task_id)
            if job is None:
                out.append({"task_id": task_id, "result": "[]", "status": 2, "error": "unknown task id"})
            else:
                out.append(upstream_item(job, service))
        return out

    return envelope(await asyncio.to_thread(collect))


async def planner_call(request: Request, fn) -> Any:
    """Run `fn(pipeline)` on the default model's planner, under its lock, off the event loop."""
    service = _service(request)
    slot = service.default
    if getattr(slot.pipe, "planner", None) is None:
        raise InvalidRequest("no planner LM is loaded on this server (start it with an LM: --lm 0.6B)")

    def run():
        with slot.lock:
            return fn(slot.pipe)

    return await asyncio.to_thread(run)


def _pick(d: dict[str, Any], *names: str) -> Any:
    return next((d[n] for n in names if d.get(n) not in (None, "")), None)


@router.post("/format_input", response_model=Envelope, openapi_extra=_body_doc(FormatInputParams))
async def format_input(request: Request) -> dict:
    """The LM enhances a caption and formats lyrics, filling missing metas (`param_obj`)."""
    body, _ = await read_body(request)
    p: FormatInputParams = parse(FormatInputParams, body)
    meta = p.param_obj
    lang = _pick(meta, "language", "vocal_language")
    duration = _pick(meta, "duration", "audio_duration")
    bpm = _pick(meta, "bpm")
    try:
        kwargs = dict(bpm=int(bpm) if bpm is not None else None, keyscale=_pick(meta, "key", "key_scale", "keyscale"),
                      timesignature=_pick(meta, "time_signature", "timesignature"),
                      duration=float(duration) if duration is not None else None,
                      language=None if lang in (None, "unknown") else str(lang))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"param_obj: {exc}") from exc
    cap = request.app.state.settings.lm_max_new_tokens
    desc = await planner_call(request, lambda pipe: pipe.planner.format(
        p.prompt, p.lyrics, temperature=p.temperature, seed=p.seed, max_new_tokens=cap, **kwargs))
    return envelope(description_data(desc))


@router.post("/create_random_sample", response_model=Envelope, openapi_extra=_body_doc(RandomSampleParams))
async def create_random_sample(request: Request) -> dict:
    """A random preset to fill a form: `simple_mode` (a description) or `custom_mode` (caption,
    lyrics, metas)."""
    body, _ = await read_body(request)
    p: RandomSampleParams = parse(RandomSampleParams, body)
    return envelope(examples.random_example(p.sample_type))


@router.post("/v1/create_sample", response_model=Envelope, openapi_extra=_body_doc(CreateSampleParams))
async def create_sample(request: Request) -> dict:
    """Simple mode: one sentence → caption, lyrics, bpm, key, time signature, duration, language."""
    body, _ = await read_body(request)
    p: CreateSampleParams = parse(CreateSampleParams, body)
    if not p.query.strip():
        raise InvalidRequest("query (or sample_query / description) must not be empty")
    lang = None if (p.vocal_language or "unknown") == "unknown" else p.vocal_language
    cap = request.app.state.settings.lm_max_new_tokens
    desc = await planner_call(request, lambda pipe: pipe.planner.create_sample(
        p.query, instrumental=p.instrumental, language=lang, temperature=p.temperature, seed=p.seed,
        max_new_tokens=cap))
    return envelope(description_data(desc, instrumental=p.instrumental or None))


def _task_types(slot) -> list[str]:
    from songstep.tasks import TASKS

    config = getattr(getattr(getattr(slot.pipe, "components", None), "dit", None), "config", None)
    turbo = bool(getattr(config, "is_turbo", True))
    return [name for name, spec in TASKS.items() if not (spec.needs_turbo_off and turbo)]


def _gpus() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [{"index": i, "name": torch.cuda.get_device_name(i)} for i in range(torch.cuda.device_count())]


@router.get("/v1/models", response_model=Envelope)
async def list_models(request: Request) -> dict:
    """The loaded DiT models (the first is the default) and planner LMs."""
    service = _service(request)
    models = [{"name": s.name, "is_default": s.is_default, "is_loaded": True, "supported_task_types": _task_types(s)}
              for s in service.slots]
    lms = sorted({s.lm_model for s in service.slots if s.lm_model})
    return envelope({"models": models, "default_model": service.default.name,
                     "lm_models": [{"name": n, "is_loaded": True} for n in lms], "gpus": _gpus()})


@router.get("/v1/model_inventory", response_model=Envelope)
async def model_inventory(request: Request) -> dict:
    """The loaded models and the DiT folders beside them that are not loaded (this server does not
    load models on demand: a job naming one of those fails with 404)."""
    service = _service(request)
    loaded = {s.name for s in service.slots}
    found: set[str] = set()
    for slot in service.slots:
        folders = getattr(getattr(slot.pipe, "components", None), "folders", None) or {}
        variant = getattr(slot.pipe.components, "variant", "")
        dit = (folders.get(variant) or folders.get("dit")) if isinstance(folders, dict) else None
        if dit is not None and Path(dit).parent.is_dir():
            found |= {p.name for p in Path(dit).parent.iterdir() if (p / "config.json").is_file()
                      and (p / "silence_latent.pt").is_file()}
    models = [{"name": n, "is_loaded": n in loaded, "is_default": n == service.default.name}
              for n in sorted(loaded | found)]
    return envelope({"models": models, "lm_models": sorted({s.lm_model for s in service.slots if s.lm_model}),
                     "slots": [{"slot": i + 1, "model": s.name} for i, s in enumerate(service.slots)]})


@router.get("/v1/stats", response_model=Envelope)
async def stats(request: Request) -> dict:
    """Job counts, queue length and limit, average job time, from the store."""
    return envelope(await asyncio.to_thread(_service(request).stats))


@router.get("/v1/audio", responses={200: {"content": {"audio/mpeg": {}}}, 403: {"model": Envelope},
                                    404: {"model": Envelope}})
async def get_audio(request: Request, path: str = Query(..., max_length=200)) -> FileResponse:
    """A stored result, by `path=<job id>/<n>.<ext>` as given in `query_result`."""
    service = _service(request)
    job_id, _, name = path.strip("/").partition("/")
    file = await asyncio.to_thread(service.result_file, job_id, name)
    return FileResponse(file, media_type=_MEDIA.get(file.suffix, "application/octet-stream"), filename=file.name)


_MEDIA = {".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg"}

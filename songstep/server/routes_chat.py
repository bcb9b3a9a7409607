"""OpenAI-style `POST /v1/chat/completions` (upstream's OpenRouter adapter): text or base64 audio
in, base64 audio out, optionally as server-sent events (role → "." heartbeats every 2 s →
content → audio → finish → [DONE]). The song is made by a job on the same queue.

The last user message decides the inputs: `<prompt>…</prompt>` / `<lyrics>…</lyrics>` tags,
lyric-like text (section markers such as `[Verse]`) as lyrics, otherwise a caption (or, with
`sample_mode`, a description for the planner). Audio part 0 is the source of an edit task or the
reference of text2music; audio part 1 is the reference.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from songstep.errors import InvalidRequest
from songstep.server.routes_upstream import parse, read_body
from songstep.server.schemas import Envelope, ReleaseTaskParams
from songstep.server.service import JobService
from songstep.server.uploads import save_base64
from songstep.tasks import get_task

router = APIRouter(tags=["openai"])
_TAG = re.compile(r"<(prompt|lyrics)>(.*?)</\1>", re.S | re.I)
_SECTION = re.compile(r"^\s*\[(verse|chorus|bridge|intro|outro|pre-chorus|hook|drop|instrumental)[^\]]*\]", re.I | re.M)
_MIME = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}


class AudioConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    duration: float | None = None
    bpm: int | None = None
    vocal_language: str | None = None
    instrumental: bool | None = None
    format: str = "mp3"
    key_scale: str | None = None
    time_signature: str | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(..., min_length=1, max_length=64)
    stream: bool = False
    audio_config: AudioConfig | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | str | None = None
    lyrics: str | None = None
    sample_mode: bool = False
    thinking: bool = False
    use_format: bool = False
    batch_size: int = Field(1, ge=1, le=8)
    task_type: str = "text2music"
    guidance_scale: float | None = None
    repainting_start: float = 0.0
    repainting_end: float | None = None
    audio_cover_strength: float = 1.0


def _user_parts(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if user is None:
        raise InvalidRequest("messages must contain a user message")
    content = user.get("content")
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InvalidRequest("message content must be a string or a list of parts")
    text = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    audios = [p.get("input_audio") or {} for p in content if isinstance(p, dict) and p.get("type") == "input_audio"]
    return text, audios


def chat_fields(req: ChatRequest, text: str) -> dict[str, Any]:
    """The chat request as `/release_task` fields (upstream's names)."""
    body: dict[str, Any] = {"thinking": req.thinking, "use_format": req.use_format, "batch_size": req.batch_size,
                            "task_type": req.task_type, "repainting_start": req.repainting_start,
                            "repainting_end": req.repainting_end, "audio_cover_strength": req.audio_cover_strength,
                            "model": req.model.split("/")[-1] if req.model else None}
    tags = {k.lower(): v.strip() for k, v in _TAG.findall(text)}
    if req.lyrics:
        body.update(prompt=text.strip(), lyrics=req.lyrics)
    elif tags:
        body.update(prompt=tags.get("prompt", ""), lyrics=tags.get("lyrics", ""))
    elif req.sample_mode:
        body.update(sample_mode=True, sample_query=text.strip())
    elif _SECTION.search(text):
        body.update(lyrics=text.strip())
    else:
        body.update(prompt=text.strip())
    cfg = req.audio_config or AudioConfig()
    body.update({k: v for k, v in dict(audio_duration=cfg.duration, bpm=cfg.bpm, vocal_language=cfg.vocal_language,
                                       instrumental=cfg.instrumental, key_scale=cfg.key_scale,
                                       time_signature=(cfg.time_signature or "").split("/")[0] or None,
                                       audio_format=cfg.format, guidance_scale=req.guidance_scale,
                                       seed=req.seed, lm_temperature=req.temperature,
                                       lm_top_p=req.top_p).items() if v is not None})
    if req.seed is not None:
        body["use_random_seed"] = False
    return body


def _content(job) -> str:
    result = job.result or {}
    meta = (result.get("items") or [{}])[0]
    lines = ["## Metadata", f"**Caption:** {result.get('caption', '')}"]
    for label, key in (("BPM", "bpm"), ("Duration", "duration"), ("Key", "keyscale"),
                       ("Time Signature", "timesignature"), ("Language", "language")):
        if meta.get(key) not in (None, ""):
            lines.append(f"**{label}:** {meta[key]}")
    lines += ["", "## Lyrics", result.get("lyrics") or "[Instrumental]"]
    return "\n".join(lines)


def _audio_parts(job, service: JobService) -> list[dict[str, Any]]:
    parts = []
    for name in (job.result or {}).get("files", []):
        data = service.result_file(job.id, name).read_bytes()
        mime = _MIME.get(name.rsplit(".", 1)[-1], "application/octet-stream")
        parts.append({"type": "audio_url",
                      "audio_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}})
    return parts


async def _submit(request: Request, req: ChatRequest, text: str, audios: list[dict[str, Any]]):
    service: JobService = request.app.state.service
    params: ReleaseTaskParams = parse(ReleaseTaskParams, chat_fields(req, text))
    slot = service.slot_for(params.model)
    job_id = service.new_id()
    fields = params.generation_fields()
    try:
        folder = service.settings.uploads_dir / job_id
        source = "source_audio" if get_task(params.task_type).needs_source else "reference_audio"
        names = [source, "reference_audio"]
        for i, part in enumerate(audios[:2]):
            if not isinstance(part.get("data"), str):
                raise InvalidRequest("input_audio.data must be a base64 string")
            path = await asyncio.to_thread(save_base64, part["data"], folder, f"input{i}", service.settings)
            fields.setdefault(names[i], None)
            fields[names[i]] = fields[names[i]] or str(path)
        spec = {"fields": fields, "options": params.job_options()}
        return await asyncio.to_thread(service.submit, slot, spec, job_id=job_id), slot
    except BaseException:
        shutil.rmtree(service.settings.uploads_dir / job_id, ignore_errors=True)
        raise


def _completion(job, model: str, service: JobService) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{job.id[:16]}", "object": "chat.completion", "created": int(job.created_at), "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": _content(job), "audio": _audio_parts(job, service)}}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _failed(job, timeout: float) -> tuple[int, str] | None:
    if job.status == "succeeded":
        return None
    if not job.finished:
        return 504, f"generation did not finish within {timeout:g} s (job {job.id} keeps running)"
    return 500, f"generation failed: {job.error}"


@router.post("/v1/chat/completions", responses={200: {"description": "chat.completion or an SSE stream"},
                                                **{c: {"model": Envelope} for c in (400, 401, 404, 415, 422, 429)}},
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": ChatRequest.model_json_schema()}}, "required": True}})
async def chat_completions(request: Request):
    body, _ = await read_body(request)
    req: ChatRequest = parse(ChatRequest, body)
    text, audios = _user_parts(req.messages)
    service: JobService = request.app.state.service
    job, slot = await _submit(request, req, text, audios)
    model = f"songstep/{slot.name}"
    timeout = service.settings.chat_timeout
    if req.stream:
        return StreamingResponse(_stream(request, service, job.id, model, timeout), media_type="text/event-stream")
    done = await service.wait(job.id, timeout)
    failure = _failed(done, timeout)
    if failure:
        from songstep.server.schemas import envelope

        return JSONResponse(envelope(None, failure[0], failure[1]), status_code=failure[0])
    return await asyncio.to_thread(_completion, done, model, service)


def _chunk(job_id: str, model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    data = {"id": f"chatcmpl-{job_id[:16]}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(data)}\n\n"


async def _stream(request: Request, service: JobService, job_id: str, model: str, timeout: float):
    yield _chunk(job_id, model, {"role": "assistant", "content": ""})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    job = service.store.get(job_id)
    while not job.finished and loop.time() < deadline:
        job = await service.wait(job_id, min(2.0, max(0.0, deadline - loop.time())))
        if not job.finished:
            if await request.is_disconnected():
                return
            yield _chunk(job_id, model, {"content": "."})
    failure = _failed(job, timeout)
    if failure:
        yield _chunk(job_id, model, {"content": f"\n\nError: {failure[1]}"}, "error")
    else:
        yield _chunk(job_id, model, {"content": "\n\n" + _content(job)})
        yield _chunk(job_id, model, {"audio": await asyncio.to_thread(_audio_parts, job, service)})
        yield _chunk(job_id, model, {}, "stop")
    yield "data: [DONE]\n\n"

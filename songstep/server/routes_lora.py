"""Upstream's adapter routes: `POST /v1/lora/load {lora_path, adapter_name}`, `/v1/lora/unload`,
`/v1/lora/toggle {use_lora}`, `/v1/lora/scale {scale}`, `GET /v1/lora/status`, in upstream's
envelope. They call the same functions as the CLI's `--lora` and the UI (`songstep.lora` through the
Pipeline's `load_lora` / `unload_lora` / `enable_lora` / `disable_lora` / `set_lora_scale`), while
the model's worker lock is held, so a running job never sees an adapter change mid-song.

`lora_path` names an adapter inside `<data dir>/loras/` (a peft folder or a `.safetensors` file),
never an arbitrary server path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from songstep.errors import InvalidRequest, ModelNotFound
from songstep.server.schemas import Envelope, envelope

router = APIRouter(prefix="/v1/lora", tags=["lora"])


class LoraLoad(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    lora_path: str = Field(..., min_length=1, max_length=300, description="an adapter inside <data dir>/loras/")
    adapter_name: str | None = Field(None, max_length=64)
    scale: float = Field(1.0, ge=0.0, le=4.0)
    model: str | None = None


class LoraName(BaseModel):
    model_config = ConfigDict(extra="ignore")
    adapter_name: str | None = Field(None, max_length=64)
    model: str | None = None


class LoraToggle(LoraName):
    use_lora: bool


class LoraScale(LoraName):
    scale: float = Field(..., ge=0.0, le=4.0)


def _slot(request: Request, model: str | None):
    slot = request.app.state.service.slot_for(model)
    if not hasattr(slot.pipe, "load_lora"):
        raise InvalidRequest("this model's pipeline takes no adapters")
    return slot


def adapter_path(root: Path, given: str) -> Path:
    """`given` resolved inside `root`; anything that leaves it is refused."""
    base = root.resolve()
    path = (base / given).resolve()
    if path != base and base not in path.parents:
        raise InvalidRequest(f"lora_path must name an adapter inside the server's adapters folder ({root})")
    if not path.exists():
        raise ModelNotFound(f"no adapter {given!r} in the server's adapters folder")
    return path


def _status(pipe) -> dict[str, Any]:
    adapters = pipe.lora_status()
    return {"adapters": adapters, "use_lora": any(a["enabled"] for a in adapters), "loaded": bool(adapters)}


@router.post("/load", response_model=Envelope)
def load(body: LoraLoad, request: Request) -> dict[str, Any]:
    slot = _slot(request, body.model)
    path = adapter_path(request.app.state.settings.loras_dir, body.lora_path)
    with slot.lock:
        name = slot.pipe.load_lora(path, scale=body.scale, name=body.adapter_name)
        return envelope({"adapter_name": name, **_status(slot.pipe)})


@router.post("/unload", response_model=Envelope)
def unload(body: LoraName, request: Request) -> dict[str, Any]:
    slot = _slot(request, body.model)
    with slot.lock:
        slot.pipe.unload_lora(body.adapter_name)
        return envelope(_status(slot.pipe))


@router.post("/toggle", response_model=Envelope)
def toggle(body: LoraToggle, request: Request) -> dict[str, Any]:
    slot = _slot(request, body.model)
    with slot.lock:
        (slot.pipe.enable_lora if body.use_lora else slot.pipe.disable_lora)(body.adapter_name)
        return envelope(_status(slot.pipe))


@router.post("/scale", response_model=Envelope)
def scale(body: LoraScale, request: Request) -> dict[str, Any]:
    slot = _slot(request, body.model)
    with slot.lock:
        slot.pipe.set_lora_scale(body.scale, body.adapter_name)
        return envelope(_status(slot.pipe))


@router.get("/status", response_model=Envelope)
def status(request: Request, model: str | None = None) -> dict[str, Any]:
    slot = _slot(request, model)
    return envelope(_status(slot.pipe))

"""The FastAPI app factory. The pipeline(s) are built in the app's lifespan (never at import),
by the caller's `pipeline_factory`, so tests inject a tiny or fake pipeline.

    app = create_app(lambda: Pipeline.from_pretrained("checkpoints"), ServerSettings(data_dir="data"))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from songstep.errors import SongstepError
from songstep.server.auth import require_key
from songstep.server.metrics import Metrics
from songstep.server.schemas import Envelope, envelope
from songstep.server.service import JobService
from songstep.server.settings import ServerSettings
from songstep.server.store import QueueFull
from songstep.server.stores import open_store
from songstep.server.uploads import TooLarge
from songstep.server.worker import Slot, model_names

log = logging.getLogger(__name__)
VERSION = "1.0"
# Routes that stream or wait for a job on purpose: the request timeout does not apply.
_UNTIMED = ("/v1/chat/completions",)


def _slots(built: Any) -> list[Slot]:
    pipes = list(built.items()) if isinstance(built, dict) else [(None, p) for p in (
        built if isinstance(built, list | tuple) else [built])]
    slots = []
    for i, (name, pipe) in enumerate(pipes):
        auto, aliases = model_names(pipe)
        name = name or auto
        slots.append(Slot(name=name, aliases=sorted({name, *aliases}), pipe=pipe, is_default=i == 0))
    return slots


@contextlib.asynccontextmanager
async def serving(app: FastAPI, settings: ServerSettings, slots: Callable[[], list[Slot]]):
    """The job service of an app's lifetime: folders, the store, the models' slots (built off the
    event loop), the workers; stopped and closed on the way out. The server and the UI share it."""
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.job_store_url)
    app.state.store = store
    service = JobService(settings, store, await asyncio.to_thread(slots), app.state.metrics)
    app.state.service = service
    recovered = service.start()
    log.info("serving models %s, recovered %s", [s.name for s in service.slots], recovered)
    try:
        yield service
    finally:
        await asyncio.to_thread(service.stop)
        store.close()


def _lifespan(pipeline_factory: Callable[[], Any], settings: ServerSettings):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with serving(app, settings, lambda: _slots(pipeline_factory())):
            yield

    return lifespan


class RequestTimeout:
    """Answer 504 when a request has not started its response within `seconds` (a download or an
    event stream that has started is not cut). `/v1/chat/completions` waits for its job on purpose."""

    def __init__(self, app: ASGIApp, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTIMED:
            await self.app(scope, receive, send)
            return
        started = asyncio.Event()

        async def tracked_send(message):
            started.set()
            await send(message)

        task = asyncio.create_task(self.app(scope, receive, tracked_send))
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiter}, timeout=self.seconds, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not started.is_set() and not task.done():
            task.cancel()
            response = JSONResponse(envelope(None, 504, f"request timed out after {self.seconds:g} s"), 504)
            await response(scope, receive, send)
            return
        await task


class BodyLimit:
    """Refuse request bodies over `limit` bytes (413): at once from Content-Length, else while the
    body streams in, before it reaches the form parser's temporary files."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            response = JSONResponse(envelope(None, 413, f"request body too large (limit {self.limit} bytes)"), 413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge(f"request body too large (limit {self.limit} bytes)")
            return message

        await self.app(scope, limited_receive, send)


def _error(code: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(envelope(None, code, message), status_code=code, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def _install_errors(app: FastAPI, settings: ServerSettings) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(SongstepError)
    async def songstep_error(request: Request, exc: SongstepError):
        code = exc.http_status if 400 <= exc.http_status < 600 else 500
        return _error(code, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        return _error(429, str(exc), {"Retry-After": str(settings.retry_after)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")


def _protected_docs(app: FastAPI) -> None:
    """With API keys, the OpenAPI spec and /docs need a key like every other route."""
    from fastapi.openapi.docs import get_swagger_ui_html

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_key)])
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="songstep API")


def create_app(pipeline_factory: Callable[[], Any], settings: ServerSettings | None = None) -> FastAPI:
    """The app. `pipeline_factory()` returns a `Pipeline`, a list of them or a dict name → pipeline
    (the first is the default model); it runs once, at startup."""
    from songstep.server import routes_chat, routes_lora, routes_upstream, routes_v2

    settings = settings or ServerSettings()
    hidden = {"openapi_url": None, "docs_url": None, "redoc_url": None} if settings.auth_enabled else {}
    app = FastAPI(title="songstep", version=VERSION, lifespan=_lifespan(pipeline_factory, settings), **hidden,
                  description="ACE-Step 1.5 music generation. Upstream-compatible routes (envelope "
                  "`{data, code, error, timestamp, extra}`) and a job API under /v2.")
    app.state.settings = settings
    app.state.metrics = Metrics(lambda: getattr(app.state, "store", None))
    _install_errors(app, settings)
    app.add_middleware(RequestTimeout, seconds=settings.request_timeout)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])

    @app.get("/health", response_model=Envelope, tags=["upstream"])
    async def health() -> dict:
        """Liveness; never needs a key."""
        return envelope({"status": "ok", "service": settings.service_name, "version": VERSION})

    @app.get("/metrics", dependencies=[Depends(require_key)], tags=["ops"],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    if settings.auth_enabled:
        _protected_docs(app)
    app.include_router(routes_upstream.router, dependencies=[Depends(require_key)])
    app.include_router(routes_chat.router, dependencies=[Depends(require_key)])
    app.include_router(routes_v2.router, dependencies=[Depends(require_key)])
    app.include_router(routes_lora.router, dependencies=[Depends(require_key)])
    return app

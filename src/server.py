"""The gateway: an app factory, middleware, the error envelope and the health routes.

Never imports torch: the engine module is imported when the app is built, but torch, transformers and
qwen_asr only when a model loads. Run with `asr-server serve` or `uvicorn --factory asr_server.server:create_app`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asr_server import __version__
from asr_server.api import transcription, translation
from asr_server.config import Settings
from asr_server.dependencies import AppServices, ServicesDep
from asr_server.engines import Engine, create_engine
from asr_server.errors import PayloadTooLarge, ServiceError, error_envelope
from asr_server.logger import configure_logging, request_id_var
from asr_server.protocol import ModelCard, ModelList
from asr_server.queue import PriorityInferQueue
from asr_server.service import TranscriptionService
from asr_server.subtitle_pipeline import SubtitlePipeline
from asr_server.translator import Translator, TranslatorConfig
from asr_server.worker import EngineState, ModelWorker

# Multipart overhead allowed on top of MAX_UPLOAD_MB before the body is cut off.
_MULTIPART_SLACK_BYTES = 64 * 1024


class BodySizeLimit:
    """Refuse request bodies beyond a limit while they stream in, before they are buffered whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, PayloadTooLarge(_too_large_message(self.max_bytes)))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(_too_large_message(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)


def _too_large_message(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes / 1024 / 1024:.0f} MiB (MAX_UPLOAD_MB)"


async def _send_error(send: Send, error: ServiceError) -> None:
    response = JSONResponse(error.envelope(), status_code=error.status_code, headers=error.headers)
    await response({"type": "http"}, _never_receive, send)


async def _never_receive() -> Message:  # pragma: no cover - JSONResponse does not read
    return {"type": "http.disconnect"}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("{} {}: {} {}", request.method, request.url.path, exc.status_code, exc.message)
        return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        param = ".".join(location) or None
        missing = first.get("type") == "missing"
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid"))
        status = 400 if missing else 422
        return JSONResponse(
            error_envelope(message, "invalid_request_error", "missing_field" if missing else "invalid_value", param),
            status_code=status,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ServiceError):  # e.g. the body limit hit while FastAPI parsed the form
            return await service_error(request, exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_envelope(str(exc.detail), "invalid_request_error", code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_var.get()
        logger.opt(exception=exc).error("unhandled error on {} {}", request.method, request.url.path)
        return JSONResponse(
            error_envelope(f"internal server error (request id {request_id})", "server_error", "internal_error"),
            status_code=500,
        )


class RequestContext:
    """Pure ASGI middleware: a request id on every log line and in `X-Request-ID`, plus an access log.

    Pure ASGI rather than BaseHTTPMiddleware so handlers still see the client's disconnect message.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logger.info(
                "{} {} -> {} in {:.1f} ms",
                scope.get("method", "WS"),
                scope.get("path", ""),
                status,
                (time.perf_counter() - started) * 1000,
            )
            request_id_var.reset(token)


def translator_config(settings: Settings) -> TranslatorConfig:
    return TranslatorConfig(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value(),
        model=settings.translate_model,
        timeout_s=settings.translate_timeout,
        max_retries=settings.translate_max_retries,
        batch_size=settings.translate_batch_size,
        max_concurrency=settings.translate_max_concurrency,
    )


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the application. `engine` overrides the one `ASR_ENGINE` names (tests, embedding)."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json, settings.log_file)
    queue = PriorityInferQueue(settings.queue_max, aging_s=settings.queue_aging_s)
    worker = ModelWorker(settings, engine or create_engine(settings), queue)
    transcription_service = TranscriptionService(settings, queue, worker)
    services = AppServices(
        settings=settings,
        queue=queue,
        worker=worker,
        transcription=transcription_service,
        subtitles=SubtitlePipeline(transcription_service, aligner_available=worker.engine.supports_alignment),
        translator=Translator(translator_config(settings)),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        logger.info("asr-server {} ready to accept requests ({})", __version__, worker.engine.describe())
        try:
            yield
        finally:
            await worker.stop()
            await services.translator.aclose()

    app = FastAPI(title="Qwen3-ASR server", version=__version__, lifespan=lifespan)
    app.state.services = services
    _install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + _MULTIPART_SLACK_BYTES)
    # Added last = outermost: the request id covers everything, error responses included.
    app.add_middleware(RequestContext)
    app.include_router(transcription.router)
    app.include_router(translation.router)
    _install_health_routes(app)
    return app


def _install_health_routes(app: FastAPI) -> None:
    @app.get("/health", tags=["operations"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], summary="Readiness: can the engine serve?")
    async def ready(services: ServicesDep) -> JSONResponse:
        worker = services.worker
        status: dict[str, Any] = worker.status()
        lazy_ok = worker.state == EngineState.unloaded and not services.settings.preload
        if worker.state == EngineState.ready or lazy_ok:
            return JSONResponse({"status": "ready", **status})
        reason = worker.load_error or f"the model is {worker.state.value}"
        return JSONResponse(
            {**error_envelope(reason, "server_error", "not_ready"), "status": worker.state.value, **status},
            status_code=503,
        )

    @app.get("/v1/models", tags=["operations"], summary="The served model")
    async def models(services: ServicesDep) -> ModelList:
        return ModelList(data=[ModelCard(id=services.settings.resolved_model_id())])

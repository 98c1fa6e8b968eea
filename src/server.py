"""The gateway: the app factory, the error envelope, and the health, readiness and metrics routes.

Never imports torch: the engine module is imported when the app is built, but torch, transformers and
qwen_asr only when a model loads. Run with `asr-server serve` or `uvicorn --factory asr_server.server:create_app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException

from asr_server import __version__
from asr_server.api import jobs, realtime, streaming, transcription, translation
from asr_server.api.dependencies import AppServices, ServicesDep
from asr_server.api.middleware import MULTIPART_SLACK_BYTES, BodySizeLimit, RequestContext
from asr_server.api.protocol import ModelCard, ModelList
from asr_server.api.security import APIKeyAuth, load_api_keys
from asr_server.config import Settings
from asr_server.diarization.service import DiarizationService
from asr_server.engines import Engine, create_engine, for_this_machine
from asr_server.errors import NotFound, ServiceError, error_envelope
from asr_server.jobs.service import JobService
from asr_server.logger import configure_logging, request_id_var
from asr_server.metrics import Metrics, gpu_memory_bytes
from asr_server.queue import PriorityInferQueue
from asr_server.services.long_media import LongMediaPipeline
from asr_server.services.speakers import SpeakerPipeline
from asr_server.services.subtitles import SubtitlePipeline
from asr_server.services.transcription import TranscriptionService
from asr_server.services.translation import TranslationService
from asr_server.translator import Translator, TranslatorConfig
from asr_server.worker import EngineState, ModelWorker


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
        # 400 for every invalid request, as OpenAI answers; the code tells a missing field from a bad value.
        return JSONResponse(
            error_envelope(message, "invalid_request_error", "missing_field" if missing else "invalid_value", param),
            status_code=400,
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
    settings = for_this_machine(settings or Settings())  # the hardware is asked once, here
    keys = load_api_keys(settings)
    secrets = [key.decode("utf-8", "replace") for key in keys] + [settings.openai_api_key.get_secret_value()]
    configure_logging(settings.log_level, settings.log_json, settings.log_file, secrets=secrets)
    metrics = Metrics()
    queue = PriorityInferQueue(settings.queue_max, aging_s=settings.queue_aging_s)
    worker = ModelWorker(settings, engine or create_engine(settings), queue, metrics)
    transcription_service = TranscriptionService(settings, queue)
    translator = Translator(translator_config(settings))
    subtitles = SubtitlePipeline(
        transcription_service,
        aligner_available=lambda: worker.engine.supports_alignment,
        chunk_seconds=settings.resolved_align_chunk_seconds(),
    )
    diarization = DiarizationService(settings)
    long_media = LongMediaPipeline(subtitles, settings.resolved_pieces_in_flight())
    services = AppServices(
        settings=settings,
        queue=queue,
        worker=worker,
        transcription=transcription_service,
        subtitles=subtitles,
        translator=translator,
        translation=TranslationService(translator, metrics),
        diarization=diarization,
        speakers=SpeakerPipeline(subtitles, diarization, settings.speaker_match_threshold),
        metrics=metrics,
        long_media=long_media,
        jobs=JobService(settings, long_media),
    )
    metrics.add_state(
        {
            "asr_queue_depth": ("Jobs waiting in the inference queue", lambda: len(queue)),
            "asr_model_loaded": ("1 when the model is loaded", lambda: float(worker.engine.loaded)),
            "asr_gpu_memory_allocated_bytes": ("GPU memory allocated by torch", gpu_memory_bytes),
        }
    )
    metrics.add_snapshot("asr_", "Live streams", services.streams.snapshot)
    engine_stats = getattr(worker.engine, "acceleration_stats", None)
    if engine_stats is not None:  # speculative acceptance, tokens per target pass, encoder time
        metrics.add_snapshot("asr_", "Acceleration", engine_stats)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        await services.jobs.start()
        logger.info("asr-server {} ready to accept requests ({})", __version__, worker.engine.describe())
        try:
            yield
        finally:
            await services.jobs.stop()
            await worker.stop()
            await services.translator.aclose()
            diarization.close()

    app = FastAPI(title="Qwen3-ASR server", version=__version__, lifespan=lifespan)
    app.state.services = services
    _install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + MULTIPART_SLACK_BYTES)
    if keys:
        open_paths = {"/health"} | ({"/metrics"} if settings.metrics_public else set())
        open_paths |= {"/ready"} if settings.ready_public else set()
        app.add_middleware(APIKeyAuth, keys=keys, open_paths=open_paths, max_per_key=settings.max_concurrent_per_key)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=[
                "X-Request-ID",
                "X-Subtitle-Mode",
                "X-Subtitle-Fallback-Chunks",
                "X-Untranslated-Cues",
                "X-Audio-Warning",
                "Location",
            ],
        )
    # Added last = outermost: the request id covers everything, error responses included.
    app.add_middleware(RequestContext, metrics=metrics)
    app.include_router(transcription.router)
    app.include_router(translation.router)
    app.include_router(streaming.router)
    app.include_router(realtime.router)
    app.include_router(jobs.router)
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

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", include_in_schema=False)
    async def prometheus_metrics(services: ServicesDep) -> Response:
        return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", tags=["operations"], summary="The served model")
    async def models(services: ServicesDep) -> ModelList:
        return ModelList(data=[ModelCard(id=services.worker.engine.model_id)])

    # `:path`: model ids hold slashes ("Qwen/Qwen3-ASR-1.7B"; the SDKs percent-encode them, the router decodes).
    @app.get("/v1/models/{model_id:path}", tags=["operations"], summary="The served model's card")
    async def model_card(model_id: str, services: ServicesDep) -> ModelCard:
        served = services.worker.engine.model_id
        if model_id != served:
            raise NotFound(
                f"the model {model_id!r} does not exist; this server serves {served!r}",
                param="model",
                code="model_not_found",
            )
        return ModelCard(id=served)

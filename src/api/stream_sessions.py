"""What both WebSocket routes (/ws/transcribe and /v1/realtime) share to accept a client and run its live session
on the shared queue: the handshake, the stream settings, the model, aligner, speaker embeddings and VAD a session
uses. Not a router.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import numpy as np
from fastapi import WebSocket
from loguru import logger
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from asr_server.api.dependencies import AppServices
from asr_server.api.stream_connection import (
    CLOSE_TRY_AGAIN,
)
from asr_server.config import Settings
from asr_server.diarization import DiarizationService, OnlineSpeakerClusterer
from asr_server.errors import InvalidField
from asr_server.media.audio import DecodedAudio
from asr_server.media.vad import VAD, load_vad
from asr_server.queue import PRIORITY_STREAM
from asr_server.streaming import (
    SegmenterConfig,
    StreamConfig,
    StreamLease,
    StreamSession,
    TranscribeFn,
    WordTimingMode,
)
from asr_server.subtitle import WordTiming

_QUERY_BOOL: TypeAdapter[bool] = TypeAdapter(bool)


def chosen_subprotocol(websocket: WebSocket) -> str | None:
    """Answer with `realtime` when a browser offered it (browsers drop a socket whose offered
    subprotocols got no answer); never echo the key-carrying `openai-insecure-api-key.*` one."""
    offered = websocket.scope.get("subprotocols", [])
    return "realtime" if "realtime" in offered else None


def make_transcriber(services: AppServices) -> TranscribeFn:
    """The session's only way to the model: the shared queue at stream priority."""

    async def transcribe(samples: np.ndarray, language: str | None, context: str) -> tuple[str, str | None]:
        services.worker.touch()
        result = await services.transcription.transcribe(
            DecodedAudio(samples=samples), language=language, context=context, priority=PRIORITY_STREAM
        )
        return result.text, result.language

    return transcribe


def make_vad(settings: Settings) -> VAD:
    return load_vad(settings.stream_vad)


class QueueAligner:
    """The forced aligner through the shared queue at stream priority, as accurate subtitles reach it."""

    def __init__(self, services: AppServices) -> None:
        self._services = services

    @property
    def available(self) -> bool:
        return self._services.subtitles.aligner_available

    async def align(self, samples: np.ndarray, text: str, language: str | None, offset: float) -> list[WordTiming]:
        self._services.worker.touch()
        subtitles = self._services.subtitles
        return await subtitles.aligned_words(samples, text, language, offset=offset, priority=PRIORITY_STREAM)


class StreamSpeakers:
    """One stream's speaker labels: utterance embeddings from the diarization service, clustered online, so a
    voice keeps its label for the whole stream. The model starts loading when the stream asks for speakers."""

    def __init__(self, service: DiarizationService, threshold: float) -> None:
        self._service = service
        self._clusterer = OnlineSpeakerClusterer(threshold)
        self._warming = asyncio.ensure_future(service.load())
        self._warming.add_done_callback(_log_load_failure)

    async def embed(self, samples: np.ndarray) -> np.ndarray:
        return await self._service.embed(samples)

    def assign(self, embedding: np.ndarray) -> str:
        return self._clusterer.assign(embedding)


def _log_load_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a stream asked for speakers, but the diarization model failed to load: {}", task.exception())


def query_flag(websocket: WebSocket, name: str) -> bool:
    """A true/false query parameter (absent: false); InvalidField for another value."""
    value = websocket.query_params.get(name)
    if value is None:
        return False
    try:
        return _QUERY_BOOL.validate_python(value)
    except ValidationError:
        raise InvalidField(
            f"the query parameter {name} must be true or false", param=name, code="invalid_query"
        ) from None


def stream_speakers(services: AppServices) -> StreamSpeakers:
    """Speaker labels for a stream that asked for them; InvalidField (`diarization_unavailable`) saying what is
    missing when the server cannot embed voices."""
    diarization = services.diarization
    if not diarization.available:
        raise InvalidField(
            f"speakers were asked for, but {diarization.unavailable_reason()}; the stream goes on without them",
            param="diarize",
            code="diarization_unavailable",
        )
    return StreamSpeakers(diarization, services.settings.speaker_match_threshold)


def speakers_from_query(
    websocket: WebSocket, services: AppServices
) -> tuple[StreamSpeakers | None, InvalidField | None]:
    """The `diarize` query parameter's speaker labels, or the error to tell the client (the stream then goes on
    without speakers)."""
    try:
        return (stream_speakers(services) if query_flag(websocket, "diarize") else None), None
    except InvalidField as exc:
        return None, exc


def word_timing(services: AppServices, requested: WordTimingMode | None) -> WordTimingMode:
    """The stream's word timing: as asked, by default accurate when the server has a forced aligner.
    InvalidField (`word_timing_unavailable`) when accurate is asked of a server without one."""
    available = services.subtitles.aligner_available
    if requested is None:
        return "accurate" if available else "fast"
    if requested == "accurate" and not available:
        raise InvalidField(
            "word_timing 'accurate' needs a forced aligner (FORCED_ALIGNER_ID) and an engine that supports it; "
            "the stream's words get fast timing",
            param="word_timing",
            code="word_timing_unavailable",
        )
    return requested


def start_session(
    services: AppServices,
    settings: Settings,
    config: StreamConfig,
    lease: StreamLease,
    *,
    speakers: StreamSpeakers | None = None,
) -> StreamSession:
    """A running VAD session on the shared queue, registered on the connection's lease."""
    session = StreamSession(
        make_transcriber(services),
        make_vad(settings),
        config,
        metrics=services.streams.metrics,
        aligner=QueueAligner(services),
        speakers=speakers,
    )
    lease.session = session
    session.start()
    return session


def stream_config(
    settings: Settings,
    *,
    language: str | None,
    context: str,
    threshold: float | None = None,
    min_silence_ms: float | None = None,
    prefix_padding_ms: float | None = None,
    words: WordTimingMode = "fast",
) -> StreamConfig:
    """The session settings from STREAM_* settings; the realtime dialect overrides the VAD ones."""
    if min_silence_ms is None:
        min_silence_ms = settings.stream_vad_min_silence_ms
    if prefix_padding_ms is None:
        prefix_padding_ms = settings.stream_vad_prefix_padding_ms
    segmenter = SegmenterConfig(
        threshold=threshold if threshold is not None else settings.stream_vad_threshold,
        min_silence_s=min_silence_ms / 1000,
        prefix_padding_s=prefix_padding_ms / 1000,
        tail_padding_s=min(0.2, min_silence_ms / 1000),  # the tail is silence the pause detection saw
        max_utterance_s=settings.stream_max_utterance_seconds,
    )
    return StreamConfig(
        segmenter=segmenter,
        language=language,
        context=context,
        partials=settings.stream_partial_budget > 0,
        partial_interval_s=settings.stream_partial_interval_ms / 1000,
        partial_budget=settings.stream_partial_budget,
        word_timing=words,
    )


async def accept(websocket: WebSocket) -> bool:
    """Complete the handshake; False when the client left meanwhile."""
    try:
        await websocket.accept(subprotocol=chosen_subprotocol(websocket))
    except (WebSocketDisconnect, RuntimeError, OSError):
        return False
    return True


async def reject_busy(websocket: WebSocket, message: dict[str, Any], settings: Settings) -> None:
    """Tell an accepted client that no stream slot is free, then close with 1013 (bounded: it may not read)."""

    async def tell() -> None:
        await websocket.send_text(json.dumps(message))
        await websocket.close(CLOSE_TRY_AGAIN, "too many concurrent streams")

    with contextlib.suppress(Exception):
        await asyncio.wait_for(tell(), settings.stream_send_timeout)

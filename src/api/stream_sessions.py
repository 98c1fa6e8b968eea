"""What both WebSocket routes (/ws/transcribe and /v1/realtime) share to accept a client and run its live session
on the shared queue: the handshake, the stream settings, the model and VAD a session uses. Not a router.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import numpy as np
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from asr_server.api.dependencies import AppServices
from asr_server.api.stream_connection import (
    CLOSE_TRY_AGAIN,
)
from asr_server.config import Settings
from asr_server.media.audio import DecodedAudio
from asr_server.media.vad import VAD, load_vad
from asr_server.queue import PRIORITY_STREAM
from asr_server.streaming import (
    SegmenterConfig,
    StreamConfig,
    StreamLease,
    StreamSession,
    TranscribeFn,
)


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


def start_session(services: AppServices, settings: Settings, config: StreamConfig, lease: StreamLease) -> StreamSession:
    """A running VAD session on the shared queue, registered on the connection's lease."""
    session = StreamSession(make_transcriber(services), make_vad(settings), config, metrics=services.streams.metrics)
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



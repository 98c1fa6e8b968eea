"""WebSocket `/ws/transcribe`: the service's own live-caption protocol (see docs/streaming.md), and `/demo`.

The endpoint is a thin adapter: it validates frames, converts PCM to 16 kHz float32 and hands it to a
`StreamSession`, whose events it forwards as JSON. Helpers shared with `/v1/realtime` live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from importlib import resources
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import HTMLResponse
from loguru import logger
from pydantic import BaseModel, ValidationError

from asr_server.api.dependencies import AppServices
from asr_server.api.stream_connection import (
    CLOSE_NORMAL,
    CLOSE_TRY_AGAIN,
    ClientGone,
    StreamClosing,
    StreamConnection,
    echo,
    parse_json,
)
from asr_server.api.stream_sessions import (
    StreamSpeakers,
    accept,
    reject_busy,
    speakers_from_query,
    start_session,
    stream_config,
    stream_speakers,
    word_timing,
)
from asr_server.errors import InvalidField
from asr_server.media import SAMPLE_RATE
from asr_server.media.audio import pcm16_to_float
from asr_server.streaming import (
    Final,
    Partial,
    SessionError,
    SessionEvent,
    StreamLease,
    StreamSession,
    Words,
    WordTimingMode,
)
from asr_server.streaming.protocol import (
    AudioFormat,
    ClientMessage,
    ErrorEvent,
    Features,
    FinalEvent,
    FlushMessage,
    Limits,
    PartialEvent,
    ReadyEvent,
    StartMessage,
    WordsEvent,
)
from asr_server.subtitle import words_payload
from asr_server.text.languages import language_label, normalize_language

router = APIRouter(tags=["streaming"])


# --- /ws/transcribe ----------------------------------------------------------------------------
@router.websocket("/ws/transcribe")
async def ws_transcribe(websocket: WebSocket) -> None:
    services: AppServices = websocket.app.state.services
    settings = services.settings
    if not await accept(websocket):
        return
    lease = services.streams.try_acquire()
    if lease is None:
        limit = settings.stream_max_concurrent
        error = ErrorEvent(code="too_many_streams", message=f"the server is serving {limit} streams; retry later")
        await reject_busy(websocket, error.model_dump(exclude_none=True), settings)
        return
    try:
        await _TranscribeStream(websocket, services, lease).run()
    finally:
        lease.release()


class _TranscribeStream:
    def __init__(self, websocket: WebSocket, services: AppServices, lease: StreamLease) -> None:
        self.ws = websocket
        self.services = services
        self.settings = services.settings
        self.lease = lease
        self.conn = StreamConnection(websocket, services.settings)
        self.session: StreamSession | None = None
        self.start_message: StartMessage | None = None
        self.timing: WordTimingMode | None = None  # None: the server's default
        self.speakers: StreamSpeakers | None = None
        self.resampler: Any = None
        self._sender: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            await self.send(self.ready_event())
            self.speakers, problem = speakers_from_query(self.ws, self.services)
            if problem is not None:
                await self.error(problem.code, problem.message)
            while True:
                message = await self.conn.get()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    await self.on_audio(message["bytes"])
                elif message.get("text") is not None:
                    await self.on_text(message["text"])
        except StreamClosing as closing:
            await self.close(closing)
        except ClientGone:
            logger.debug("a /ws/transcribe client left")
        finally:
            if self._sender is not None:
                self._sender.cancel()
            if self.session is not None:
                await self.session.aclose()
            await self.conn.aclose()

    def ready_event(self) -> ReadyEvent:
        settings = self.settings
        return ReadyEvent(
            session_id=uuid.uuid4().hex[:16],
            audio=AudioFormat(),
            limits=Limits(
                max_frame_bytes=settings.stream_max_frame_bytes,
                max_buffer_seconds=settings.stream_max_buffer_seconds,
                idle_timeout_seconds=settings.stream_idle_timeout,
                max_session_seconds=settings.stream_max_session_seconds,
                max_concurrent_streams=settings.stream_max_concurrent,
                max_utterance_seconds=settings.stream_max_utterance_seconds,
                partial_interval_ms=settings.stream_partial_interval_ms,
            ),
            features=Features(
                word_timing="accurate" if self.services.subtitles.aligner_available else "fast",
                diarization=self.services.diarization.available,
            ),
        )

    # --- inbound ---------------------------------------------------------------------------
    async def on_audio(self, data: bytes) -> None:
        """Validate and feed one binary frame."""
        if len(data) > self.settings.stream_max_frame_bytes:
            await self.error(
                "frame_too_large", f"audio frames may hold at most {self.settings.stream_max_frame_bytes} bytes"
            )
            return
        if len(data) % 2:
            await self.error("invalid_audio", "audio frames must hold whole 16-bit samples (an even number of bytes)")
            return
        if not data:
            return
        self.conn.audio_arrived()
        self.services.worker.touch()
        session = self.ensure_session()
        samples = pcm16_to_float(data)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        settings = self.settings
        if not await session.wait_for_room(settings.stream_max_buffer_seconds, self.conn.seconds_left()):
            waiting = f"more than {settings.stream_max_buffer_seconds:g} s of audio is waiting for the model"
            raise StreamClosing(CLOSE_TRY_AGAIN, "the model cannot keep up", "buffer_full", waiting, finish=False)
        await session.feed(samples)

    async def on_text(self, text: str) -> None:
        if len(text.encode()) > self.settings.stream_max_frame_bytes:
            await self.error(
                "frame_too_large", f"messages may hold at most {self.settings.stream_max_frame_bytes} bytes"
            )
            return
        try:
            payload = parse_json(text)
        except ValueError:
            await self.error("invalid_json", "text messages must be JSON objects")
            return
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            await self.error("invalid_message", "a message is a JSON object with a string 'type'")
            return
        if payload["type"] not in ("start", "flush", "stop"):
            await self.error(
                "unknown_type", f"unknown message type {echo(payload['type'])}; expected start, flush or stop"
            )
            return
        try:
            message = ClientMessage.validate_python(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"][1:])
            await self.error("invalid_message", f"{where}: {first['msg']}" if where else first["msg"])
            return
        if isinstance(message, StartMessage):
            await self.on_start(message)
        elif isinstance(message, FlushMessage):
            if self.session is not None:
                await self.session.flush()
        else:
            raise StreamClosing(CLOSE_NORMAL, "stopped")

    async def on_start(self, message: StartMessage) -> None:
        if self.session is not None:
            await self.error("invalid_state", "'start' must come before the first audio frame")
            return
        try:
            normalize_language(message.language)
        except InvalidField as exc:
            await self.error("invalid_language", exc.message)
            return
        self.start_message = message
        self.timing = None
        if message.word_timing is not None:
            try:
                self.timing = word_timing(self.services, message.word_timing)
            except InvalidField as exc:
                self.timing = "fast"
                await self.error(exc.code, exc.message)
        if message.diarize is not None:
            await self.set_speakers(message.diarize)

    async def set_speakers(self, wanted: bool) -> None:
        """Label the stream's voices or not; a server that cannot gets an error event, and no speakers."""
        if not wanted:
            self.speakers = None
        elif self.speakers is None:
            try:
                self.speakers = stream_speakers(self.services)
            except InvalidField as exc:
                await self.error(exc.code, exc.message)

    def ensure_session(self) -> StreamSession:
        if self.session is None:
            start = self.start_message or StartMessage(type="start")
            if start.sample_rate != SAMPLE_RATE:
                import soxr

                self.resampler = soxr.ResampleStream(start.sample_rate, SAMPLE_RATE, 1, dtype="float32")
            config = stream_config(
                self.settings,
                language=normalize_language(start.language),
                context=start.prompt or "",
                words=self.timing or word_timing(self.services, None),
            )
            self.session = start_session(self.services, self.settings, config, self.lease, speakers=self.speakers)
            self._sender = asyncio.create_task(self._forward(self.session))
        return self.session

    # --- outbound --------------------------------------------------------------------------
    async def _forward(self, session: StreamSession) -> None:
        while True:
            event = await session.events.get()
            try:
                wire = _to_wire(event)
                if wire is not None:
                    await self.send(wire)
            except ClientGone:  # the handler's next read ends the stream; events are still consumed
                pass
            finally:
                session.events.task_done()

    async def send(self, event: BaseModel) -> None:
        if isinstance(event, FinalEvent):
            await self.conn.send_text(event.wire())
            return
        await self.conn.send_text(event.model_dump_json(exclude_none=isinstance(event, ErrorEvent)))

    async def error(self, code: str, message: str) -> None:
        self.services.streams.metrics.errors += 1
        await self.send(ErrorEvent(code=code, message=message))

    async def close(self, closing: StreamClosing) -> None:
        with contextlib.suppress(ClientGone):
            if self.session is not None and closing.finish:
                await self.session.finish()
                await self.session.events.join()  # every final reached the client (or was dropped)
            if closing.error_code is not None:
                self.services.streams.metrics.errors += 1
                await self.send(ErrorEvent(code=closing.error_code, message=closing.message))
            await self.conn.close(closing)


def _to_wire(event: SessionEvent) -> BaseModel | None:
    if isinstance(event, Partial):
        return PartialEvent(
            segment_id=event.segment_id, text=event.text, start=round(event.start, 3), end=round(event.end, 3)
        )
    if isinstance(event, Final):
        return FinalEvent(
            segment_id=event.segment_id,
            text=event.text,
            language=language_label(event.language),
            start=round(event.start, 3),
            end=round(event.end, 3),
            words=words_payload(list(event.words)) if event.words is not None else None,
            speaker=event.speaker,
        )
    if isinstance(event, Words):
        timing = "accurate" if event.timing == "accurate" else "fast"
        return WordsEvent(segment_id=event.segment_id, word_timing=timing, words=words_payload(list(event.words)))
    if isinstance(event, SessionError):
        return ErrorEvent(code=event.code, message=event.message, segment_id=event.segment_id)
    return None  # speech started/stopped: not part of this protocol


# --- the demo page -------------------------------------------------------------------------------
@router.get("/demo", include_in_schema=False)
async def demo_page() -> HTMLResponse:
    """A microphone page that streams to /ws/transcribe and shows partial and final text live."""
    page = resources.files("asr_server").joinpath("static/demo.html").read_text(encoding="utf-8")
    return HTMLResponse(page)

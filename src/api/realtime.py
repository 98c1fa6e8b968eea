"""WebSocket `/v1/realtime`: OpenAI's Realtime API for transcription sessions, wire-compatible.

Audio arrives as base64 PCM16 at 24 kHz in `input_audio_buffer.append`. With server VAD (the default)
a `StreamSession` finds the turns: `speech_started` / `speech_stopped` / `committed`, append-only
`...transcription.delta` events from the stable part of the partials, then `.completed`. With
`turn_detection: null` the client commits each turn and the whole committed buffer is one item.
Both the GA dialect (`session.update`) and the beta one (`OpenAI-Beta: realtime=v1`,
`transcription_session.update`) are spoken; limits and priorities are those of /ws/transcribe.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from loguru import logger
from pydantic import BaseModel, ValidationError

from asr_server.api.dependencies import AppServices
from asr_server.api.realtime_turns import CommittedTurns, TurnOptions
from asr_server.api.stream_connection import (
    CLOSE_TRY_AGAIN,
    ClientGone,
    StreamClosing,
    StreamConnection,
    echo,
    parse_json,
)
from asr_server.api.stream_sessions import accept, reject_busy, speakers_from_query, start_session, stream_config
from asr_server.errors import InvalidField
from asr_server.media import SAMPLE_RATE
from asr_server.media.audio import pcm16_to_float
from asr_server.streaming import (
    Final,
    Partial,
    SessionError,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
    StreamLease,
    StreamSession,
)
from asr_server.streaming.realtime_protocol import (
    CLIENT_EVENT_TYPES,
    INPUT_RATE,
    UNCHANGED,
    AppendAudio,
    ClearAudio,
    ClearedEvent,
    ClientEvent,
    CommitAudio,
    CommittedEvent,
    CompletedEvent,
    DeltaEvent,
    ErrorDetail,
    ErrorEvent,
    FailedEvent,
    ItemEvent,
    SessionSettings,
    SessionUpdate,
    SpeechStartedEvent,
    SpeechStoppedEvent,
    TranscriptionOptions,
    TranscriptionSessionUpdate,
    TurnDetection,
    new_id,
    requested_changes,
    stable_prefix,
)
from asr_server.subtitle import WordTiming, words_payload
from asr_server.text.languages import language_code, normalize_language

router = APIRouter(tags=["streaming"])


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    services: AppServices = websocket.app.state.services
    offered = websocket.scope.get("subprotocols", [])
    beta = websocket.headers.get("openai-beta", "").startswith("realtime") or "openai-beta.realtime-v1" in offered
    if not await accept(websocket):
        return
    lease = services.streams.try_acquire()
    if lease is None:
        limit = services.settings.stream_max_concurrent
        detail = ErrorDetail(type="server_error", code="too_many_streams", message=f"{limit} streams are live")
        await reject_busy(websocket, ErrorEvent(error=detail).model_dump(), services.settings)
        return
    try:
        await _Realtime(websocket, services, lease, beta=beta).run()
    finally:
        lease.release()


class _Realtime:
    def __init__(self, websocket: WebSocket, services: AppServices, lease: StreamLease, *, beta: bool) -> None:
        settings = services.settings
        self.ws, self.services, self.settings, self.lease, self.beta = websocket, services, settings, lease, beta
        self.defaults = TurnDetection(
            threshold=settings.stream_vad_threshold,
            prefix_padding_ms=round(settings.stream_vad_prefix_padding_ms),
            silence_duration_ms=round(settings.stream_vad_min_silence_ms),
        )
        self.config = SessionSettings(model=websocket.query_params.get("model") or settings.model_id or "qwen3-asr")
        self.conn = StreamConnection(websocket, settings)
        self.session: StreamSession | None = None
        self.forwarder: asyncio.Task[None] | None = None
        self.speakers, self.problem = speakers_from_query(websocket, services)  # ?diarize=true: `speaker`
        # turn_detection null: the input buffer and the committed turns
        self.turns = CommittedTurns(services, self.conn, self.turn_options, self.completed, self.failed, self.speakers)
        self.resampler: Any = None
        self.items: dict[int, str] = {}  # segment id → item id
        self.sent: dict[str, str] = {}  # item id → text already sent as deltas
        self.partials: dict[str, str] = {}  # item id → last partial
        self.previous_item: str | None = None
        # Base64 inflates by 4/3; the decoded audio per append obeys STREAM_MAX_FRAME_BYTES.
        self.max_message = settings.stream_max_frame_bytes * 4 // 3 + 4096

    # --- the connection --------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self.send(self.session_event("created"))
            if self.problem is not None:
                await self.error(self.problem.code, self.problem.message, param=self.problem.param)
            while True:
                message = await self.conn.get()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await self.on_text(message["text"])
                elif message.get("bytes") is not None:
                    await self.error("invalid_event", "send audio as input_audio_buffer.append events (JSON text)")
        except StreamClosing as close:
            await self.close(close)
        except ClientGone:
            logger.debug("a /v1/realtime client left")
        finally:
            if self.forwarder is not None:
                self.forwarder.cancel()
            if self.session is not None:
                await self.session.aclose()
            await self.turns.aclose()
            await self.conn.aclose()
            self.items.clear()
            self.sent.clear()
            self.partials.clear()

    def turn_options(self) -> TurnOptions:
        language = normalize_language(self.config.language)
        return TurnOptions(language=language, context=self.config.prompt, threshold=self.defaults.threshold or 0.5)

    async def close(self, close: StreamClosing) -> None:
        with contextlib.suppress(ClientGone):
            if close.finish:
                await self.end_session()
                await self.turns.join()
            await self.send(ErrorEvent(error=ErrorDetail(code=close.error_code, message=close.message)))
            await self.conn.close(close)

    # --- client events ---------------------------------------------------------------------
    async def on_text(self, text: str) -> None:
        if len(text) > self.max_message:
            await self.error("message_too_large", f"events may hold at most {self.max_message} characters")
            return
        try:
            payload = parse_json(text)
        except ValueError:
            await self.error("invalid_json", "events must be JSON objects")
            return
        fields = payload if isinstance(payload, dict) else {}
        # Echoed back only when it is what the protocol says it is: a string.
        client_event_id = fields.get("event_id") if isinstance(fields.get("event_id"), str) else None
        kind = fields.get("type")
        if not isinstance(kind, str) or kind not in CLIENT_EVENT_TYPES:
            supported = ", ".join(sorted(CLIENT_EVENT_TYPES))
            await self.error(
                "unsupported_event", f"unsupported event {echo(kind)}; supported: {supported}", client_event_id
            )
            return
        try:
            event = ClientEvent.validate_python(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(part) for part in first["loc"][1:]) or None
            await self.error("invalid_value", f"{param}: {first['msg']}", client_event_id, param)
            return
        try:
            if isinstance(event, AppendAudio):
                await self.on_append(event.audio)
            elif isinstance(event, CommitAudio):
                await self.on_commit()
            elif isinstance(event, ClearAudio):
                await self.on_clear()
            else:
                await self.on_update(event)
        except InvalidField as exc:
            await self.error(exc.code, exc.message, client_event_id, exc.param)

    async def on_update(self, event: SessionUpdate | TranscriptionSessionUpdate) -> None:
        transcription, turn_detection = requested_changes(event)
        await self.apply(transcription, turn_detection)
        await self.send(self.session_event("updated"))

    async def apply(self, transcription: TranscriptionOptions | None, turn_detection: Any) -> None:
        config = self.config
        if transcription is not None:
            if "language" in transcription.model_fields_set:
                normalize_language(transcription.language, param="session.audio.input.transcription.language")
                config.language = transcription.language or None
            if transcription.prompt is not None:
                config.prompt = transcription.prompt
            if transcription.model:
                config.model = transcription.model
            if self.session is not None:
                self.session.config = dataclasses.replace(
                    self.session.config, language=normalize_language(config.language), context=config.prompt
                )
        if turn_detection is not UNCHANGED and turn_detection != config.turn_detection:
            await self.end_session()  # what was heard is committed under the old settings
            config.turn_detection = turn_detection
            audio = self.turns.take() if turn_detection is not None else None
            if audio is not None:
                await self.feed(audio)

    async def on_append(self, encoded: str) -> None:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidField("audio must be base64-encoded PCM16", param="audio") from None
        if len(data) % 2:
            raise InvalidField("audio must hold whole 16-bit samples (an even number of bytes)", param="audio")
        if not data:
            return
        self.conn.audio_arrived()
        self.services.worker.touch()
        if self.resampler is None:
            import soxr

            self.resampler = soxr.ResampleStream(INPUT_RATE, SAMPLE_RATE, 1, dtype="float32")
        samples = self.resampler.resample_chunk(pcm16_to_float(data))
        if self.config.turn_detection is None:
            self.turns.append(samples)
            return
        await self.feed(samples)

    async def feed(self, samples: np.ndarray) -> None:
        session = self.ensure_session()
        settings = self.settings
        if not await session.wait_for_room(settings.stream_max_buffer_seconds, self.conn.seconds_left()):
            raise StreamClosing(CLOSE_TRY_AGAIN, "the model cannot keep up", "buffer_full", "too much audio is waiting")
        await session.feed(samples)

    async def on_commit(self) -> None:
        if self.config.turn_detection is not None:
            if self.session is None or self.session.open_segment_id is None:
                raise InvalidField(
                    "there is no uncommitted speech to commit", param=None, code="input_audio_buffer_commit_empty"
                )
            await self.session.flush()
            return
        self.turns.check_commit()
        await self.turns.wait_for_room()
        item = new_id("item")
        await self.committed(item)
        self.turns.commit(item)

    async def on_clear(self) -> None:
        if self.session is not None:
            open_segment = self.session.open_segment_id
            self.session.clear()
            if open_segment is not None:  # its final will never come
                self.forget(self.items.pop(open_segment, None))
        self.turns.clear()
        await self.send(ClearedEvent())

    # --- server VAD: a StreamSession ----------------------------------------------------------
    def ensure_session(self) -> StreamSession:
        if self.session is None:
            td = self.config.turn_detection or self.defaults
            config = stream_config(
                self.settings,
                language=normalize_language(self.config.language),
                context=self.config.prompt,
                threshold=td.threshold,
                min_silence_ms=td.silence_duration_ms,
                prefix_padding_ms=td.prefix_padding_ms,
            )
            self.session = start_session(self.services, self.settings, config, self.lease, speakers=self.speakers)
            self.forwarder = asyncio.create_task(self.forward(self.session))
        return self.session

    async def end_session(self) -> None:
        """Finalise the current VAD session and deliver its events (turn detection changed, or closing)."""
        session, forwarder = self.session, self.forwarder
        if session is None:
            return
        await session.finish()
        await session.events.join()
        self.session = self.forwarder = None
        if forwarder is not None:
            forwarder.cancel()
        await session.aclose()

    async def forward(self, session: StreamSession) -> None:
        while True:
            event = await session.events.get()
            try:
                await self.on_session_event(event)
            except ClientGone:  # the handler's next read ends the stream; events are still consumed
                pass
            except Exception:
                logger.exception("realtime event not delivered")
            finally:
                session.events.task_done()

    async def on_session_event(self, event: SessionEvent) -> None:
        if isinstance(event, SpeechStarted):
            item = self.items[event.segment_id] = new_id("item")
            await self.send(SpeechStartedEvent(audio_start_ms=round(event.start * 1000), item_id=item))
        elif isinstance(event, SpeechStopped):
            item = self.items[event.segment_id]
            await self.send(SpeechStoppedEvent(audio_end_ms=round(event.end * 1000), item_id=item))
            await self.committed(item)
        elif isinstance(event, Partial):
            item = self.items[event.segment_id]
            stable = stable_prefix(self.partials.get(item, ""), event.text)
            self.partials[item] = event.text
            await self.delta(item, stable)
        elif isinstance(event, Final):
            item = self.items.pop(event.segment_id)
            await self.completed(
                item, event.text, event.language, event.end - event.start, event.words or (), event.speaker
            )
        elif isinstance(event, SessionError):
            item = self.items.pop(event.segment_id, None) if event.segment_id is not None else None
            self.forget(item)
            await self.failed(item, event.code, event.message)

    # --- server events ---------------------------------------------------------------------
    def session_event(self, what: str) -> BaseModel:
        return self.config.event(what, self.defaults, beta=self.beta)

    async def committed(self, item: str) -> None:
        previous, self.previous_item = self.previous_item, item
        await self.send(CommittedEvent(item_id=item, previous_item_id=previous))
        user_item = ItemEvent.user_audio(item)
        if self.beta:
            await self.send(ItemEvent(type="conversation.item.created", item=user_item, previous_item_id=previous))
        else:
            await self.send(ItemEvent(type="conversation.item.added", item=user_item, previous_item_id=previous))
            await self.send(ItemEvent(type="conversation.item.done", item=user_item, previous_item_id=previous))

    async def delta(self, item: str, text: str) -> None:
        """Send the part of `text` beyond what was sent, if what was sent is still its prefix."""
        sent = self.sent.get(item, "")
        if len(text) > len(sent) and text.startswith(sent):
            self.sent[item] = text
            await self.send(DeltaEvent(item_id=item, delta=text[len(sent) :]))

    def forget(self, item: str | None) -> None:
        """Drop what was kept for an item that is done."""
        if item is not None:
            self.sent.pop(item, None)
            self.partials.pop(item, None)

    async def completed(
        self,
        item: str,
        text: str,
        language: str | None,
        seconds: float,
        words: tuple[WordTiming, ...] = (),
        speaker: str | None = None,
    ) -> None:
        await self.delta(item, text)
        self.forget(item)
        code = None if self.beta else language_code(language)
        await self.send(CompletedEvent.of(item, text, seconds, code, words_payload(list(words)), speaker))

    async def failed(self, item: str | None, code: str, message: str) -> None:
        detail = ErrorDetail(type="server_error", code=code, message=message)
        await self.send(FailedEvent(item_id=item, error=detail) if item else ErrorEvent(error=detail))

    async def error(self, code: str, message: str, event_id: str | None = None, param: str | None = None) -> None:
        self.services.streams.metrics.errors += 1
        await self.send(ErrorEvent(error=ErrorDetail(code=code, message=message, param=param, event_id=event_id)))

    async def send(self, event: BaseModel) -> None:
        await self.conn.send_text(event.model_dump_json(exclude_none=isinstance(event, CompletedEvent)))

"""Wire models of OpenAI's Realtime API, transcription sessions only, in both dialects the SDK speaks.

- GA (`client.realtime.connect`): `session.update` with `session.type = "transcription"` and the
  settings under `session.audio.input`; the server answers `session.created/updated`.
- Beta (`client.beta.realtime.connect`, header `OpenAI-Beta: realtime=v1`): `transcription_session.update`
  with flat `input_audio_format` / `input_audio_transcription` / `turn_detection`; the server answers
  `transcription_session.created/updated`.
Shapes follow `openai/types/realtime/` and `openai/types/beta/realtime/` of the openai SDK. Unknown
fields are accepted and ignored, as OpenAI's server does for fields it does not use.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from asr_server.errors import InvalidField

INPUT_RATE = 24_000  # `audio/pcm` / `pcm16` in the Realtime API is always 24 kHz


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class TurnDetection(_Lenient):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(default=None, gt=0, lt=1)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=2000)
    silence_duration_ms: int | None = Field(default=None, ge=100, le=10_000)


class TranscriptionOptions(_Lenient):
    model: str | None = None
    language: str | None = None
    prompt: str | None = Field(default=None, max_length=10_000)


class AudioFormat(_Lenient):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: int | None = None


class AudioInput(_Lenient):
    format: AudioFormat | None = None
    transcription: TranscriptionOptions | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: dict[str, Any] | None = None


class Audio(_Lenient):
    input: AudioInput | None = None


class GASession(_Lenient):
    type: Literal["transcription", "realtime"] = "transcription"
    audio: Audio | None = None


class BetaSession(_Lenient):
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: TranscriptionOptions | None = None
    turn_detection: TurnDetection | None = None


class SessionUpdate(_Lenient):
    type: Literal["session.update"]
    event_id: str | None = None
    session: GASession


class TranscriptionSessionUpdate(_Lenient):
    type: Literal["transcription_session.update"]
    event_id: str | None = None
    session: BetaSession


class AppendAudio(_Lenient):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str


class CommitAudio(_Lenient):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class ClearAudio(_Lenient):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


ClientEvent = TypeAdapter(
    Annotated[
        SessionUpdate | TranscriptionSessionUpdate | AppendAudio | CommitAudio | ClearAudio,
        Field(discriminator="type"),
    ]
)
CLIENT_EVENT_TYPES = frozenset(
    {
        "session.update",
        "transcription_session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
    }
)


UNCHANGED: Any = object()  # "the update did not mention turn_detection" (None means: turn it off)


def requested_changes(event: SessionUpdate | TranscriptionSessionUpdate) -> tuple[TranscriptionOptions | None, Any]:
    """(transcription options, turn detection or UNCHANGED) of an update in either dialect.

    Raises InvalidField for what this server cannot do (conversation sessions, G.711 audio).
    """
    if isinstance(event, SessionUpdate):
        if event.session.type != "transcription":
            raise InvalidField("this server offers transcription sessions only", param="session.type")
        audio_input = event.session.audio.input if event.session.audio else None
        if audio_input is None:
            return None, UNCHANGED
        fmt = audio_input.format
        if fmt is not None and (fmt.type != "audio/pcm" or fmt.rate not in (None, INPUT_RATE)):
            raise InvalidField("only audio/pcm at 24000 Hz is supported", param="session.audio.input.format")
        mentioned = "turn_detection" in audio_input.model_fields_set
        return audio_input.transcription, audio_input.turn_detection if mentioned else UNCHANGED
    session = event.session
    if session.input_audio_format not in (None, "pcm16"):
        raise InvalidField("only pcm16 is supported", param="session.input_audio_format")
    mentioned = "turn_detection" in session.model_fields_set
    return session.input_audio_transcription, session.turn_detection if mentioned else UNCHANGED


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass
class SessionSettings:
    """The effective transcription session, rendered in either dialect."""

    model: str
    language: str | None = None  # as the client sent it ("en")
    prompt: str = ""
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    id: str = field(default_factory=lambda: new_id("sess"))

    def _turn_detection(self, defaults: TurnDetection) -> dict[str, Any] | None:
        if self.turn_detection is None:
            return None
        td = self.turn_detection
        return {
            "type": td.type,
            "threshold": td.threshold if td.threshold is not None else defaults.threshold,
            "prefix_padding_ms": td.prefix_padding_ms
            if td.prefix_padding_ms is not None
            else defaults.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms
            if td.silence_duration_ms is not None
            else defaults.silence_duration_ms,
        }

    def _transcription(self) -> dict[str, Any]:
        return {"model": self.model, "language": self.language, "prompt": self.prompt}

    def ga(self, defaults: TurnDetection) -> dict[str, Any]:
        return {
            "type": "transcription",
            "id": self.id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": INPUT_RATE},
                    "transcription": self._transcription(),
                    "turn_detection": self._turn_detection(defaults),
                    "noise_reduction": None,
                }
            },
            "include": [],
        }

    def event(self, what: str, defaults: TurnDetection, *, beta: bool) -> SessionEvent:
        """`session.created/updated` (GA) or `transcription_session.created/updated` (beta)."""
        if beta:
            return SessionEvent(type=f"transcription_session.{what}", session=self.beta(defaults))
        return SessionEvent(type=f"session.{what}", session=self.ga(defaults))

    def beta(self, defaults: TurnDetection) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "realtime.transcription_session",
            "input_audio_format": "pcm16",
            "input_audio_transcription": self._transcription(),
            "turn_detection": self._turn_detection(defaults),
            "input_audio_noise_reduction": None,
            "modalities": ["text"],
            "include": [],
        }


# --- server → client ---------------------------------------------------------------------------
class ServerEvent(BaseModel):
    """Every server event carries its own id; subclasses fix `type`."""

    event_id: str = Field(default_factory=lambda: new_id("event"))


class SessionEvent(ServerEvent):
    type: Literal[
        "session.created", "session.updated", "transcription_session.created", "transcription_session.updated"
    ]
    session: dict[str, Any]


class SpeechStartedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStoppedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class CommittedEvent(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None = None


class ClearedEvent(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class ItemEvent(ServerEvent):
    """`conversation.item.added` / `.done` (GA) or `conversation.item.created` (beta) for a user audio item."""

    type: Literal["conversation.item.added", "conversation.item.done", "conversation.item.created"]
    item: dict[str, Any]
    previous_item_id: str | None = None

    @staticmethod
    def user_audio(item_id: str, transcript: str | None = None) -> dict[str, Any]:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": transcript}],
        }


class DeltaEvent(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )
    item_id: str
    content_index: int = 0
    delta: str


class CompletedEvent(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    item_id: str
    content_index: int = 0
    transcript: str
    usage: dict[str, Any]
    languages: list[dict[str, str]] | None = None
    # This server's own, beside OpenAI's fields (its SDKs keep unknown fields and ignore them): the transcript's
    # words [{"word", "start", "end"}] and, on a `?diarize=true` connection, the voice's label ("A").
    words: list[dict[str, Any]] | None = None
    speaker: str | None = None

    @classmethod
    def of(
        cls, item_id: str, text: str, seconds: float, code: str | None, words: list[dict[str, Any]], speaker: str | None
    ) -> CompletedEvent:
        """A turn's transcript: `code` the language's ISO code (None: no `languages`), `words` [] for none."""
        languages = [{"code": code}] if code else None
        usage = {"type": "duration", "seconds": round(seconds, 3)}
        return cls(
            item_id=item_id, transcript=text, usage=usage, languages=languages, words=words or None, speaker=speaker
        )


class ErrorDetail(BaseModel):
    type: str = "invalid_request_error"
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = None  # the client event that caused it


class FailedEvent(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )
    item_id: str
    content_index: int = 0
    error: ErrorDetail


class ErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorDetail


def stable_prefix(previous: str, current: str) -> str:
    """What two successive partials agree on, safe to send as an append-only delta.

    Space-delimited text: the leading whole words both share, never the last word of `current`
    (the audio may have ended inside it). Other text (Chinese, Japanese): the shared leading
    characters, never the last one.
    """
    if " " in current:
        before, words = previous.split(" "), current.split(" ")[:-1]
        n = 0
        while n < min(len(before), len(words)) and before[n] == words[n]:
            n += 1
        return "".join(word + " " for word in words[:n])
    n = 0
    for a, b in zip(previous, current, strict=False):
        if a != b:
            break
        n += 1
    return current[: min(n, len(current) - 1)]

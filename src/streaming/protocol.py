"""Wire models of the `/ws/transcribe` protocol (docs/streaming.md): what clients send and receive."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

SAMPLE_RATES = (8000, 16000, 24000, 48000)
MAX_PROMPT_CHARS = 10_000


# --- client → server ---------------------------------------------------------------------------
class StartMessage(BaseModel):
    """Optional first message: language (ISO code or name), context prompt, PCM sample rate, word timing
    (default: accurate when the server has a forced aligner) and speakers (default: the `diarize` query
    parameter)."""

    type: Literal["start"]
    language: str | None = None
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    sample_rate: Literal[8000, 16000, 24000, 48000] = 16000
    word_timing: Literal["accurate", "fast", "none"] | None = None
    diarize: bool | None = None


class FlushMessage(BaseModel):
    type: Literal["flush"]


class StopMessage(BaseModel):
    type: Literal["stop"]


ClientMessage = TypeAdapter(Annotated[StartMessage | FlushMessage | StopMessage, Field(discriminator="type")])


# --- server → client ---------------------------------------------------------------------------
class AudioFormat(BaseModel):
    encoding: Literal["pcm_s16le"] = "pcm_s16le"
    channels: int = 1
    sample_rate: int = 16000
    sample_rates: list[int] = Field(default_factory=lambda: list(SAMPLE_RATES))


class Limits(BaseModel):
    max_frame_bytes: int
    max_buffer_seconds: float
    idle_timeout_seconds: float
    max_session_seconds: float
    max_concurrent_streams: int
    max_utterance_seconds: float
    partial_interval_ms: float


class Features(BaseModel):
    """What this server adds to finals: the default word timing, and whether `diarize` can be asked."""

    word_timing: Literal["accurate", "fast"]
    diarization: bool


class ReadyEvent(BaseModel):
    type: Literal["ready"] = "ready"
    session_id: str
    audio: AudioFormat
    limits: Limits
    features: Features


class PartialEvent(BaseModel):
    """Unstable text of the open utterance; replaces the previous partial of the same segment."""

    type: Literal["partial"] = "partial"
    segment_id: int
    text: str
    start: float
    end: float


class Word(BaseModel):
    """One timed word (a CJK character), seconds on the stream's clock: OpenAI verbose_json's word shape."""

    word: str
    start: float
    end: float


class FinalEvent(BaseModel):
    """Committed text of one utterance; never changes. `language` as the HTTP API names it ("english").
    `words` (fast timing; absent with word_timing "none") cover the text in order within [start, end];
    `speaker` is there when the stream asked for speakers and the utterance's voice could be labelled."""

    type: Literal["final"] = "final"
    segment_id: int
    text: str
    language: str | None
    start: float
    end: float
    words: list[Word] | None = None
    speaker: str | None = None

    def wire(self) -> str:
        absent = {name for name in ("words", "speaker") if getattr(self, name) is None}
        return self.model_dump_json(exclude=absent)


class WordsEvent(BaseModel):
    """With word_timing "accurate", after each final with words: the forced aligner's words, which replace
    the final's. `word_timing` is "fast" when the aligner failed on this utterance (the final's words stand)."""

    type: Literal["words"] = "words"
    segment_id: int
    word_timing: Literal["accurate", "fast"]
    words: list[Word]


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    code: str
    message: str
    segment_id: int | None = None

"""Wire models: request options and response bodies (OpenAI's audio API shapes where they exist)."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ResponseFormat(str, Enum):
    json = "json"
    text = "text"
    verbose_json = "verbose_json"
    srt = "srt"
    vtt = "vtt"
    diarized_json = "diarized_json"


class TimestampGranularity(str, Enum):
    word = "word"
    segment = "segment"


class TranscriptionInclude(str, Enum):
    """`include[]` values: `logprobs` adds the text tokens' log-probabilities (response_format json)."""

    logprobs = "logprobs"


class ServerVadChunking(BaseModel):
    """`chunking_strategy` as an object (OpenAI's `ChunkingStrategyVadConfig`). Accepted and validated; the
    server always cuts long audio at its quietest points itself."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"]
    prefix_padding_ms: int | None = Field(default=None, ge=0)
    silence_duration_ms: int | None = Field(default=None, ge=0)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "qwen"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


# --- response bodies (json / verbose_json); srt, vtt and text are plain bodies --------------------------------
class DurationUsage(BaseModel):
    """OpenAI's usage for duration-billed models: the audio's whole seconds, rounded up."""

    type: Literal["duration"] = "duration"
    seconds: int


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TranscriptionSegment(BaseModel):
    """OpenAI's `TranscriptionSegment`; how each statistic is measured is in docs/openai-compatibility.md."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    speaker: str | None = Field(default=None, description="with diarize=true")


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float
    speaker: str | None = Field(default=None, description="with diarize=true")


class DiarizedSegment(BaseModel):
    """OpenAI's `TranscriptionDiarizedSegment`: one speaker's stretch of speech. As a stream event (stream=true) it
    is OpenAI's `TranscriptionTextSegmentEvent`, the same fields."""

    type: Literal["transcript.text.segment"] = "transcript.text.segment"
    id: str
    start: float
    end: float
    text: str
    speaker: str


class TranscriptionDiarizedJSON(BaseModel):
    """`response_format=diarized_json`: OpenAI's `TranscriptionDiarized`."""

    task: Literal["transcribe"] = "transcribe"
    duration: float
    text: str
    segments: list[DiarizedSegment]
    usage: DurationUsage
    warnings: list[str] | None = None


class TranscriptionJSON(BaseModel):
    """`response_format=json`: OpenAI's `Transcription` plus the detected language and the duration."""

    text: str
    language: str | None
    language_code: str | None
    duration: float
    usage: DurationUsage
    logprobs: list[TokenLogprob] | None = Field(default=None, description="with include[]=logprobs")
    warnings: list[str] | None = Field(default=None, description="when part of the audio could not be decoded")


class TranscriptionVerboseJSON(BaseModel):
    """`response_format=verbose_json`: OpenAI's `TranscriptionVerbose`, plus how the times were made."""

    task: Literal["transcribe"] = "transcribe"
    language: str | None
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = Field(default=None, description="unless granularities omit them")
    words: list[TranscriptionWord] | None = Field(default=None, description="with timestamp_granularities[]=word")
    usage: DurationUsage
    subtitle_mode: str
    timing_fallback_chunks: list[int]
    warnings: list[str] | None = None


class TranslatedSegment(TranscriptionSegment):
    source_text: str


class TranslationJSON(BaseModel):
    """`response_format=json` of a translation (OpenAI's `Translation`), with the source kept."""

    text: str
    target_language: str
    source_text: str
    source_language: str | None
    untranslated: list[int] = Field(description="indices of cues the LLM left in the source language")
    duration: float | None = None


class TranslationVerboseJSON(TranslationJSON):
    """`response_format=verbose_json` of a translation: OpenAI's `TranslationVerbose`."""

    task: Literal["translate"] = "translate"
    language: str
    duration: float
    segments: list[TranslatedSegment]


def json_body(model: BaseModel) -> dict[str, object]:
    """A response model as its JSON body. Optional extras (fields whose default is None) are left out when absent;
    required fields that may be null (`language`) are always sent."""
    body = model.model_dump(mode="json")
    fields = type(model).model_fields
    return {k: v for k, v in body.items() if not (v is None and k in fields and fields[k].default is None)}


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorEnvelope(BaseModel):
    """Every error, whatever its status: OpenAI's shape (`asr_server.errors.error_envelope`)."""

    error: ErrorDetail


_TEXT_BODIES: dict[str, object] = {
    "text/plain": {"schema": {"type": "string"}},
    "application/x-subrip": {"schema": {"type": "string"}},
    "text/vtt": {"schema": {"type": "string"}},
}
_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in {
        400: "invalid request (bad field value, undecodable audio)",
        401: "missing or invalid API key",
        413: "upload or audio too long",
        415: "unsupported file format",
        429: "queue full or too many requests for this key (Retry-After)",
        502: "the translation LLM failed (the body keeps the source)",
        503: "the model is not available",
        504: "the request timed out",
    }.items()
}
TRANSCRIPTION_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "model": TranscriptionJSON | TranscriptionVerboseJSON | TranscriptionDiarizedJSON,
        "description": "json, verbose_json or diarized_json; text, srt and vtt as plain bodies; stream=true as "
        "Server-Sent Events",
        "content": {**_TEXT_BODIES, "text/event-stream": {"schema": {"type": "string"}}},
    },
    **{status: error for status, error in _ERRORS.items() if status != 502},
}
TRANSLATION_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "model": TranslationJSON | TranslationVerboseJSON,
        "description": "json or verbose_json; text, srt and vtt as plain bodies",
        "content": _TEXT_BODIES,
    },
    **_ERRORS,
}

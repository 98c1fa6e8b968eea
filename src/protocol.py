"""Wire models: request options and response bodies (OpenAI's audio API shapes where they exist)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field


class ResponseFormat(str, Enum):
    json = "json"
    text = "text"
    verbose_json = "verbose_json"
    srt = "srt"
    vtt = "vtt"


class TimestampGranularity(str, Enum):
    word = "word"
    segment = "segment"


class TranscriptionJSON(BaseModel):
    """`response_format=json`. OpenAI's shape (`text`) plus the language and duration we know."""

    text: str
    language: str | None = Field(description="Detected or forced language, lower-case name ('english').")
    duration: float = Field(description="Audio duration in seconds.")


class Segment(BaseModel):
    id: int
    start: float
    end: float
    text: str
    seek: int = 0
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


class Word(BaseModel):
    word: str
    start: float
    end: float


class TranscriptionVerboseJSON(BaseModel):
    task: str = "transcribe"
    language: str | None
    duration: float
    text: str
    segments: list[Segment] = Field(default_factory=list)
    words: list[Word] | None = None


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "qwen"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]

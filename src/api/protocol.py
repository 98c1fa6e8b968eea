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

"""Wire models: request options and response bodies (OpenAI's audio API shapes where they exist)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel


class ResponseFormat(str, Enum):
    json = "json"
    text = "text"
    verbose_json = "verbose_json"
    srt = "srt"
    vtt = "vtt"


class TimestampGranularity(str, Enum):
    word = "word"
    segment = "segment"


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "qwen"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]

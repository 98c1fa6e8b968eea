"""POST /transcribe and POST /v1/audio/transcriptions (one handler, OpenAI's multipart form)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from asr_server.audio import decode_audio
from asr_server.dependencies import ServicesDep, cancel_on_disconnect
from asr_server.errors import InvalidField, PayloadTooLarge
from asr_server.languages import normalize_language
from asr_server.protocol import (
    ResponseFormat,
    Segment,
    TimestampGranularity,
    TranscriptionJSON,
    TranscriptionVerboseJSON,
)
from asr_server.service import TranscriptionResult

router = APIRouter(tags=["transcription"])

SUPPORTED_NOW = (ResponseFormat.json, ResponseFormat.text, ResponseFormat.verbose_json)


async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the upload is larger than {max_bytes / 1024 / 1024:g} MiB (MAX_UPLOAD_MB)", param="file"
        )
    return data


def _language_name(result: TranscriptionResult) -> str | None:
    return result.language.lower() if result.language else None


def format_transcription(result: TranscriptionResult, response_format: ResponseFormat) -> Response:
    if response_format == ResponseFormat.text:
        return PlainTextResponse(result.text + "\n" if result.text else "")
    if response_format == ResponseFormat.verbose_json:
        body = TranscriptionVerboseJSON(
            language=_language_name(result),
            duration=round(result.duration, 3),
            text=result.text,
            segments=[Segment(id=0, start=0.0, end=round(result.duration, 3), text=result.text)]
            if result.text
            else [],
        )
        return JSONResponse(body.model_dump(exclude_none=True))
    body_json = TranscriptionJSON(text=result.text, language=_language_name(result), duration=round(result.duration, 3))
    return JSONResponse(body_json.model_dump())


@router.post("/transcribe", summary="Transcribe an audio file")
@router.post("/v1/audio/transcriptions", summary="Transcribe an audio file (OpenAI-compatible)")
async def transcribe(
    request: Request,
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="Audio file: wav, flac, ogg, mp3, m4a, mp4, webm, ...")],
    model: Annotated[str | None, Form(description="Accepted for compatibility; the served model is used.")] = None,
    language: Annotated[str | None, Form(description="ISO-639-1 code ('en', 'zh') or name; empty = detect")] = None,
    prompt: Annotated[str | None, Form(description="Context text that helps the model (names, terms)")] = None,
    response_format: Annotated[ResponseFormat, Form()] = ResponseFormat.json,
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    timestamp_granularities: Annotated[
        list[TimestampGranularity] | None, Form(alias="timestamp_granularities[]")
    ] = None,
) -> Response:
    settings = services.settings
    if response_format not in SUPPORTED_NOW:
        raise InvalidField(
            f"response_format {response_format.value!r} is not supported yet", param="response_format"
        )
    if prompt is not None and len(prompt) > 10_000:
        raise InvalidField("prompt is longer than 10000 characters", param="prompt")
    language_name = normalize_language(language)
    data = await read_upload(file, settings.max_upload_bytes)
    audio = await asyncio.to_thread(
        decode_audio, data, file.filename, max_seconds=settings.max_audio_seconds
    )
    result = await cancel_on_disconnect(
        request,
        services.transcription.transcribe(audio, language=language_name, context=prompt or ""),
    )
    return format_transcription(result, response_format)

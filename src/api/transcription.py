"""POST /transcribe and POST /v1/audio/transcriptions (one handler, OpenAI's multipart form)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from loguru import logger

from asr_server.audio import DecodedAudio, decode_audio
from asr_server.cues import to_srt, to_vtt
from asr_server.dependencies import AppServices, ServicesDep, cancel_on_disconnect
from asr_server.errors import InvalidField, PayloadTooLarge, ServiceError
from asr_server.languages import language_code, normalize_language
from asr_server.middleware import note_audio_warning
from asr_server.protocol import ResponseFormat, TimestampGranularity
from asr_server.service import TranscriptionResult
from asr_server.subtitle import CueRules, segments_from_cues, words_payload
from asr_server.subtitle_pipeline import SubtitleMode, TimedTranscription

router = APIRouter(tags=["transcription"])

TIMED_FORMATS = (ResponseFormat.srt, ResponseFormat.vtt, ResponseFormat.verbose_json)
SUBTITLE_MEDIA_TYPES = {ResponseFormat.srt: "application/x-subrip", ResponseFormat.vtt: "text/vtt"}
MAX_PROMPT_CHARS = 10_000


async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the upload is larger than {max_bytes / 1024 / 1024:g} MiB (MAX_UPLOAD_MB)", param="file"
        )
    return data


async def decode_upload(file: UploadFile, services: AppServices) -> DecodedAudio:
    settings = services.settings
    data = await read_upload(file, settings.max_upload_bytes)
    audio = await asyncio.to_thread(decode_audio, data, file.filename, max_seconds=settings.max_audio_seconds)
    if audio.warning:  # transcribed anyway (part of the speech is better than none), but never silently
        logger.warning("upload {!r}: {}", file.filename, audio.warning)
        note_audio_warning(audio.warning)
    return audio


def cue_rules(
    max_line_width: int | None, max_lines: int | None, max_cue_duration: float | None, max_cps: float | None
) -> CueRules:
    overrides = {
        name: value
        for name, value in {
            "max_line_width": max_line_width,
            "max_lines": max_lines,
            "max_duration": max_cue_duration,
            "max_cps": max_cps,
        }.items()
        if value is not None
    }
    if max_cps is not None:
        # CJK is read at roughly half the characters per second of Latin text.
        overrides["max_cps_cjk"] = max_cps * CueRules.max_cps_cjk / CueRules.max_cps
    if max_cue_duration is not None:
        overrides["min_duration"] = min(CueRules.min_duration, max_cue_duration)
    try:
        return CueRules(**overrides)
    except ValueError as exc:
        raise InvalidField(str(exc)) from exc


def _language_name(language: str | None) -> str | None:
    return language.lower() if language else None


def format_plain(result: TranscriptionResult, response_format: ResponseFormat) -> Response:
    if response_format == ResponseFormat.text:
        return PlainTextResponse(result.text + "\n" if result.text else "")
    return JSONResponse(
        {
            "text": result.text,
            "language": _language_name(result.language),
            "language_code": language_code(result.language),
            "duration": round(result.duration, 3),
        }
    )


def format_timed(
    result: TimedTranscription,
    response_format: ResponseFormat,
    granularities: list[TimestampGranularity],
) -> Response:
    headers = {"X-Subtitle-Mode": result.mode.value}
    if result.fallback_chunks:
        headers["X-Subtitle-Fallback-Chunks"] = ",".join(str(i) for i in result.fallback_chunks)
    if response_format in SUBTITLE_MEDIA_TYPES:
        body = to_srt(result.cues) if response_format == ResponseFormat.srt else to_vtt(result.cues)
        return PlainTextResponse(body, media_type=SUBTITLE_MEDIA_TYPES[response_format], headers=headers)
    payload: dict[str, object] = {
        "task": "transcribe",
        "language": _language_name(result.language),
        "duration": round(result.duration, 3),
        "text": result.text,
        "segments": [
            {**segment, "start": round(segment["start"], 3), "end": round(segment["end"], 3)}
            for segment in segments_from_cues(result.cues)
        ],
        "subtitle_mode": result.mode.value,
        "timing_fallback_chunks": result.fallback_chunks,
    }
    if TimestampGranularity.word in granularities:
        payload["words"] = words_payload(result.words)
    return JSONResponse(payload, headers=headers)


async def sse_transcription(
    services: AppServices, audio: DecodedAudio, language: str | None, context: str
) -> AsyncIterator[bytes]:
    """OpenAI's streaming shape: `transcript.text.delta` per finished segment, then `transcript.text.done`."""

    def event(payload: dict[str, object]) -> bytes:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    text = ""
    try:
        async for delta in services.transcription.transcribe_progressively(audio, language=language, context=context):
            text += delta
            yield event({"type": "transcript.text.delta", "delta": delta})
    except ServiceError as exc:  # mid-stream: the status line is gone, so the error is an event
        yield event({"type": "error", **exc.envelope()})
        return
    yield event({"type": "transcript.text.done", "text": text})


def resolve_mode(services: AppServices, requested: SubtitleMode | None) -> SubtitleMode:
    pipeline = services.subtitles
    if requested is None:
        return pipeline.default_mode()
    if requested == SubtitleMode.accurate and not pipeline.aligner_available:
        raise InvalidField(
            "subtitle_mode 'accurate' needs a forced aligner (FORCED_ALIGNER_ID) and an engine that supports it; "
            "use subtitle_mode=fast",
            param="subtitle_mode",
        )
    return requested


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
    subtitle_mode: Annotated[
        SubtitleMode | None,
        Form(description="Timing for srt/vtt/verbose_json: accurate (forced aligner) or fast (heuristic)"),
    ] = None,
    max_line_width: Annotated[int | None, Form(ge=2, le=200, description="Display columns per line")] = None,
    max_lines: Annotated[int | None, Form(ge=1, le=10, description="Lines per subtitle cue")] = None,
    max_cue_duration: Annotated[float | None, Form(gt=0.5, le=60, description="Seconds a cue may last")] = None,
    max_cps: Annotated[float | None, Form(gt=1, le=100, description="Reading speed ceiling, chars/s")] = None,
    stream: Annotated[bool, Form(description="Server-Sent Events: a delta per finished segment (json/text)")] = False,
) -> Response:
    if stream and response_format not in (ResponseFormat.json, ResponseFormat.text):
        raise InvalidField("stream=true works with response_format json or text", param="stream")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidField(f"prompt is longer than {MAX_PROMPT_CHARS} characters", param="prompt")
    language_name = normalize_language(language)
    timed = response_format in TIMED_FORMATS
    if timed:
        mode = resolve_mode(services, subtitle_mode)
        rules = cue_rules(max_line_width, max_lines, max_cue_duration, max_cps)
    audio = await decode_upload(file, services)
    if stream:
        return StreamingResponse(
            sse_transcription(services, audio, language_name, prompt or ""),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    if not timed:
        result = await cancel_on_disconnect(
            request, services.transcription.transcribe(audio, language=language_name, context=prompt or "")
        )
        return format_plain(result, response_format)
    timed_result = await cancel_on_disconnect(
        request,
        services.subtitles.run(audio, language=language_name, context=prompt or "", mode=mode, rules=rules),
    )
    return format_timed(timed_result, response_format, timestamp_granularities or [TimestampGranularity.segment])

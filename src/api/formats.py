"""Answers in the response formats, shared by the routes that transcribe (uploads now, jobs later): json and text
from a transcription; srt, vtt and verbose_json from a timed one."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from asr_server.api.protocol import (
    DurationUsage,
    ResponseFormat,
    TimestampGranularity,
    TokenLogprob,
    TranscriptionJSON,
    TranscriptionSegment,
    TranscriptionVerboseJSON,
    TranscriptionWord,
    json_body,
)
from asr_server.api.uploads import SUBTITLE_MEDIA_TYPES
from asr_server.engines import Transcript
from asr_server.errors import ServiceError
from asr_server.services.segments import token_logprobs, verbose_segments
from asr_server.services.subtitles import TimedTranscription
from asr_server.services.transcription import TextDelta, TranscriptionResult
from asr_server.subtitle import words_payload
from asr_server.text.cues import to_srt, to_vtt
from asr_server.text.languages import language_code, language_label


def duration_usage(seconds: float) -> DurationUsage:
    return DurationUsage(seconds=math.ceil(seconds))


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no caching, no proxy buffering


def sse_event(payload: dict[str, object]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def sse_text(deltas: AsyncIterator[TextDelta], *, logprobs: bool = False) -> AsyncIterator[bytes]:
    """OpenAI's streaming shape: `transcript.text.delta` per delta, then `transcript.text.done`; with
    `include[]=logprobs` each carries the log-probabilities of its tokens. An error mid-stream (the status line is
    gone) is an `error` event."""
    text = ""
    scores: list[dict[str, object]] = []
    try:
        async for delta in deltas:
            text += delta.text
            payload: dict[str, object] = {"type": "transcript.text.delta", "delta": delta.text}
            if logprobs:
                piece = token_logprobs([delta.transcript])
                payload["logprobs"] = piece
                scores.extend(piece)
            yield sse_event(payload)
    except ServiceError as exc:
        yield sse_event({"type": "error", **exc.envelope()})
        return
    yield sse_event({"type": "transcript.text.done", "text": text, **({"logprobs": scores} if logprobs else {})})


def format_plain(
    result: TranscriptionResult,
    response_format: ResponseFormat,
    *,
    logprobs: bool = False,
    warning: str | None = None,
    transcripts: Sequence[Transcript] | None = None,
) -> Response:
    """json or text. `transcripts`: the engine's outputs the logprobs come from (default: the result's own)."""
    if response_format == ResponseFormat.text:
        return PlainTextResponse(result.text + "\n" if result.text else "")
    body = TranscriptionJSON(
        text=result.text,
        language=language_label(result.language),
        language_code=language_code(result.language),
        duration=round(result.duration, 3),
        usage=duration_usage(result.duration),
    )
    if logprobs:
        if transcripts is None:
            transcripts = [result.transcript] if result.transcript else []
        body.logprobs = [TokenLogprob(**p) for p in token_logprobs(transcripts)]
    if warning:  # the X-Audio-Warning header says the same; a body field survives proxies and SDK parsing
        body.warnings = [warning]
    return JSONResponse(json_body(body))


def format_timed(
    result: TimedTranscription,
    response_format: ResponseFormat,
    granularities: list[TimestampGranularity],
    temperature: float = 0.0,
    warning: str | None = None,
) -> Response:
    headers = {"X-Subtitle-Mode": result.mode.value}
    if result.fallback_chunks:
        headers["X-Subtitle-Fallback-Chunks"] = ",".join(str(i) for i in result.fallback_chunks)
    if response_format in SUBTITLE_MEDIA_TYPES:
        subtitles = to_srt(result.cues) if response_format == ResponseFormat.srt else to_vtt(result.cues)
        return PlainTextResponse(subtitles, media_type=SUBTITLE_MEDIA_TYPES[response_format], headers=headers)
    body = TranscriptionVerboseJSON(
        language=language_label(result.language),
        duration=round(result.duration, 3),
        text=result.text,
        usage=duration_usage(result.duration),
        subtitle_mode=result.mode.value,
        timing_fallback_chunks=result.fallback_chunks,
    )
    if TimestampGranularity.segment in granularities:
        segments = verbose_segments(result.cues, result.transcripts, result.speech_frames, temperature)
        body.segments = [TranscriptionSegment(**segment) for segment in segments]
    if TimestampGranularity.word in granularities:
        body.words = [TranscriptionWord(**word) for word in words_payload(result.words)]
    if warning:
        body.warnings = [warning]
    return JSONResponse(json_body(body), headers=headers)

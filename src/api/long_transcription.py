"""/v1/audio/transcriptions (and /transcribe) for audio past LONG_AUDIO_SECONDS: the same answers, made piece by
piece (`services.long_media`), so memory is bounded by the pieces in flight and the file counts as one request.

Speakers need the whole recording at once, so they stay with audio up to LONG_AUDIO_SECONDS (413 beyond,
`uploads.needs_whole_audio`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from asr_server.api.dependencies import AppServices, cancel_on_disconnect
from asr_server.api.formats import SSE_HEADERS, format_plain, format_timed, sse_text
from asr_server.api.protocol import ResponseFormat, TimestampGranularity
from asr_server.api.uploads import note_warning
from asr_server.media.long_audio import LongAudio
from asr_server.media.pieces import iter_pieces
from asr_server.services.subtitles import SubtitleMode, assemble, majority_language
from asr_server.services.transcription import TextDelta, TranscriptionResult
from asr_server.subtitle import CueRules
from asr_server.text.units import join_pieces


async def transcribe_long(
    request: Request,
    services: AppServices,
    audio: LongAudio,
    *,
    response_format: ResponseFormat,
    language: str | None,
    context: str,
    mode: SubtitleMode | None,
    rules: CueRules | None,
    granularities: list[TimestampGranularity],
    temperature: float,
    logprobs: bool,
    filename: str | None,
) -> Response:
    """The answer for a long file; closes `audio`."""
    timed = mode is not None and rules is not None
    measure_speech = response_format == ResponseFormat.verbose_json and TimestampGranularity.segment in granularities
    pipeline = services.long_media
    try:
        outcomes = await cancel_on_disconnect(
            request,
            pipeline.run(
                iter_pieces(audio.blocks(), pipeline.piece_seconds),
                language=language,
                context=context,
                mode=mode or SubtitleMode.fast,
                measure_speech=measure_speech,
                timed=timed,
            ),
        )
        duration = audio.decoded_seconds
        warning = audio.warning
    finally:
        await asyncio.to_thread(audio.close)
    note_warning(filename, warning)
    if not timed:
        result = TranscriptionResult(
            text=join_pieces(o.transcript.text for o in outcomes),
            language=majority_language([o.chunk.language for o in outcomes]) or language,
            duration=duration,
        )
        transcripts = [o.transcript for o in outcomes]
        return format_plain(result, response_format, logprobs=logprobs, warning=warning, transcripts=transcripts)
    assert mode is not None and rules is not None
    timed_result = await assemble(outcomes, duration, mode=mode, rules=rules, language=language)
    return format_timed(timed_result, response_format, granularities, temperature, warning=warning)


def stream_long(
    services: AppServices, audio: LongAudio, *, language: str | None, context: str, logprobs: bool
) -> StreamingResponse:
    """stream=true for a long file: a `transcript.text.delta` per piece, in order, then `transcript.text.done`.
    Closes `audio`."""
    pipeline = services.long_media

    async def deltas() -> AsyncIterator[TextDelta]:
        try:
            pieces = iter_pieces(audio.blocks(), pipeline.piece_seconds)
            async for delta in pipeline.text_deltas(pieces, language=language, context=context):
                yield delta
        finally:
            await asyncio.to_thread(audio.close)

    return StreamingResponse(sse_text(deltas(), logprobs=logprobs), media_type="text/event-stream", headers=SSE_HEADERS)

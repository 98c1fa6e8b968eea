"""/v1/audio/transcriptions (and /transcribe) for audio past LONG_AUDIO_SECONDS: the same answers, made piece by
piece (`services.long_media`), so memory is bounded by the pieces in flight and the file counts as one request.

Speakers need the whole recording at once, so they stay with audio up to LONG_AUDIO_SECONDS (413 beyond).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from asr_server.api.dependencies import AppServices, cancel_on_disconnect
from asr_server.api.formats import format_plain, format_timed, sse_event
from asr_server.api.protocol import ResponseFormat, TimestampGranularity
from asr_server.api.uploads import note_warning
from asr_server.errors import PayloadTooLarge, ServiceError
from asr_server.media.long_audio import LongAudio
from asr_server.media.pieces import iter_pieces
from asr_server.services.segments import token_logprobs
from asr_server.services.subtitles import PieceOutcome, SubtitleMode, assemble
from asr_server.services.transcription import TranscriptionResult
from asr_server.subtitle import CueRules
from asr_server.text.units import join_pieces

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def refuse_speakers(services: AppServices) -> PayloadTooLarge:
    limit = services.settings.long_audio_seconds
    return PayloadTooLarge(
        f"speaker labels take audio up to {limit:g} s (LONG_AUDIO_SECONDS): speakers are clustered over the whole "
        "recording at once; longer audio is transcribed without them",
        param="file",
        code="audio_too_long",
    )


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
            language=_language(outcomes) or language,
            duration=duration,
        )
        transcripts = [o.transcript for o in outcomes]
        return format_plain(result, response_format, logprobs=logprobs, warning=warning, transcripts=transcripts)
    assert mode is not None and rules is not None
    timed_result = await assemble(outcomes, duration, mode=mode, rules=rules, language=language)
    return format_timed(timed_result, response_format, granularities, temperature, warning=warning)


def _language(outcomes: list[PieceOutcome]) -> str | None:
    named = [o.chunk.language for o in outcomes if o.chunk.language]
    return max(set(named), key=named.count) if named else None


def stream_long(
    services: AppServices, audio: LongAudio, *, language: str | None, context: str, logprobs: bool
) -> StreamingResponse:
    """stream=true for a long file: a `transcript.text.delta` per piece, in order, as soon as it and every piece
    before it are done; then `transcript.text.done`. Closes `audio`."""
    pipeline = services.long_media

    async def events() -> AsyncIterator[bytes]:
        finished: dict[int, PieceOutcome] = {}
        arrived = asyncio.Event()

        async def keep(outcome: PieceOutcome) -> None:
            finished[outcome.chunk.index] = outcome
            arrived.set()

        run = asyncio.ensure_future(
            pipeline.run(
                iter_pieces(audio.blocks(), pipeline.piece_seconds),
                language=language,
                context=context,
                mode=SubtitleMode.fast,
                timed=False,
                on_piece=keep,
            )
        )
        text, scores, following = "", [], 0
        try:
            while True:
                while following in finished:
                    outcome = finished.pop(following)
                    following += 1
                    joined = join_pieces([text, outcome.transcript.text])
                    if len(joined) > len(text):
                        payload: dict[str, object] = {"type": "transcript.text.delta", "delta": joined[len(text) :]}
                        if logprobs:
                            piece_scores = token_logprobs([outcome.transcript])
                            payload["logprobs"] = piece_scores
                            scores.extend(piece_scores)
                        text = joined
                        yield sse_event(payload)
                if run.done():
                    run.result()  # raises the run's error
                    if following not in finished:
                        break
                    continue
                arrived.clear()
                waiter = asyncio.ensure_future(arrived.wait())
                await asyncio.wait([run, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        except ServiceError as exc:  # mid-stream: the status line is gone, so the error is an event
            yield sse_event({"type": "error", **exc.envelope()})
            return
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await asyncio.to_thread(audio.close)
        done: dict[str, object] = {"type": "transcript.text.done", "text": text}
        if logprobs:
            done["logprobs"] = scores
        yield sse_event(done)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

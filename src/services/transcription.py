"""Serving logic between the HTTP layer and the queue: submit jobs, wait for them, shape results.

No FastAPI here: the same calls serve REST, WebSocket and benchmarks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from asr_server.config import Settings
from asr_server.engines import TranscribeItem, Transcript
from asr_server.errors import JobTimeout
from asr_server.media import SAMPLE_RATE
from asr_server.media.audio import DecodedAudio
from asr_server.media.vad import split_at_quiet_points
from asr_server.queue import PRIORITY_HTTP, JobKind, PriorityInferQueue
from asr_server.text.units import join_pieces

# Segment length for progressive (SSE) transcription: short enough to show progress, long enough for context.
STREAM_SEGMENT_SECONDS = 30.0


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    language: str | None  # the model's language name ("English"), None when unknown
    duration: float
    transcript: Transcript | None = None  # the engine's, with its tokens


@dataclass(frozen=True)
class TextDelta:
    """A piece of progressive text (with its joining space) and the engine output it came from."""

    text: str
    transcript: Transcript


class TranscriptionService:
    def __init__(self, settings: Settings, queue: PriorityInferQueue) -> None:
        self._settings = settings
        self._queue = queue

    async def submit(
        self, kind: JobKind, payload: Any, *, priority: int = PRIORITY_HTTP, admitted: bool = False
    ) -> Any:
        """Queue one job and wait for its result. Raises QueueFull / JobTimeout / the job's own error.

        Cancelling the awaiting task (client disconnected) cancels the job: the queue then drops it.
        `admitted`: see `PriorityInferQueue.submit` (later pieces of a long file are never refused).
        """
        timeout = self._settings.request_timeout
        job = self._queue.submit(payload, priority=priority, timeout=timeout, kind=kind, admitted=admitted)
        try:
            return await asyncio.wait_for(job.future, timeout)
        except TimeoutError as exc:
            raise JobTimeout(f"the request did not finish within REQUEST_TIMEOUT={timeout:g} s") from exc
        finally:
            if not job.future.done():
                job.future.cancel()

    async def transcribe(
        self,
        audio: DecodedAudio,
        *,
        language: str | None = None,
        context: str = "",
        priority: int = PRIORITY_HTTP,
    ) -> TranscriptionResult:
        item = TranscribeItem(audio=audio.samples, language=language, context=context)
        transcript: Transcript = await self.submit(JobKind.transcribe, item, priority=priority)
        return TranscriptionResult(
            text=transcript.text.strip(),
            language=transcript.language or language,
            duration=audio.duration,
            transcript=transcript,
        )

    async def transcribe_progressively(
        self,
        audio: DecodedAudio,
        *,
        language: str | None = None,
        context: str = "",
        segment_seconds: float = STREAM_SEGMENT_SECONDS,
    ) -> AsyncIterator[TextDelta]:
        """Yield text deltas in order, one per segment cut at quiet points; their concatenation is the text.

        All segments are queued at once (so they batch), and each delta is yielded as soon as it and
        every segment before it are done. Segments do not overlap, so no text repeats at the joins.
        Closing the iterator early cancels the segments not yet run.
        """
        ranges = split_at_quiet_points(audio.samples, SAMPLE_RATE, segment_seconds)
        tasks = [
            asyncio.ensure_future(
                self.submit(
                    JobKind.transcribe,
                    TranscribeItem(audio=audio.samples[start:end], language=language, context=context),
                )
            )
            for start, end in ranges
        ]
        emitted = ""
        try:
            for task in tasks:
                transcript: Transcript = await task
                joined = join_pieces([emitted, transcript.text])
                if len(joined) > len(emitted):
                    yield TextDelta(joined[len(emitted) :], transcript)  # the new text, with its joining space
                    emitted = joined
        finally:
            for task in tasks:
                task.cancel()

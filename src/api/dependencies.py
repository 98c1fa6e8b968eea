"""Everything a request handler needs, built once per app and injected (never module globals)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from asr_server.config import Settings
from asr_server.diarization.service import DiarizationService
from asr_server.jobs.service import JobService
from asr_server.metrics import Metrics
from asr_server.queue import PriorityInferQueue
from asr_server.services.long_media import LongMediaPipeline
from asr_server.services.speakers import SpeakerPipeline
from asr_server.services.subtitles import SubtitlePipeline
from asr_server.services.transcription import TranscriptionService
from asr_server.services.translation import TranslationService
from asr_server.streaming.metrics import StreamRegistry
from asr_server.translator import Translator
from asr_server.worker import ModelWorker

T = TypeVar("T")


@dataclass
class AppServices:
    settings: Settings
    queue: PriorityInferQueue
    worker: ModelWorker
    transcription: TranscriptionService
    subtitles: SubtitlePipeline
    translator: Translator
    translation: TranslationService
    diarization: DiarizationService  # speaker turns and embeddings, on its own executor
    speakers: SpeakerPipeline  # timed transcription with speakers (diarized_json, diarize=true)
    metrics: Metrics
    long_media: LongMediaPipeline  # audio past LONG_AUDIO_SECONDS, piece by piece
    jobs: JobService  # POST /v1/jobs: stored, resumable, with webhooks
    # Live streams: the concurrency limit and counters, shared by /ws/transcribe and /v1/realtime.
    streams: StreamRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.streams = StreamRegistry(self.settings.stream_max_concurrent)


def get_services(request: Request) -> AppServices:
    return request.app.state.services


ServicesDep = Annotated[AppServices, Depends(get_services)]


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client disconnects first (its queued job is then dropped).

    The body has been read by the time handlers run, so the next ASGI message is the disconnect.
    """
    work_task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work_task.cancel()
        watcher.cancel()
        raise
    if not work_task.done():
        work_task.cancel()
        watcher.cancel()
        raise asyncio.CancelledError("client disconnected")
    watcher.cancel()
    return work_task.result()

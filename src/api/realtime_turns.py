"""`/v1/realtime` with `turn_detection: null`: the client's input buffer and the turns it commits.

Memory is bounded and released: the input buffer holds at most STREAM_MAX_BUFFER_SECONDS, committed
audio waiting for the model obeys the same bound (until there is room the stream stops reading, so TCP
slows the client, and it closes with `buffer_full` if none comes in time), and a turn's audio is
dropped as soon as its transcript is out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from loguru import logger

from asr_server.api.dependencies import AppServices
from asr_server.api.stream_connection import CLOSE_TRY_AGAIN, StreamClosing, StreamConnection
from asr_server.api.stream_sessions import StreamSpeakers, make_transcriber, make_vad
from asr_server.engines.base import MIN_AUDIO_SAMPLES  # OpenAI refuses to commit less than 100 ms
from asr_server.errors import InvalidField, ServiceError
from asr_server.media import SAMPLE_RATE
from asr_server.media.vad import VAD
from asr_server.streaming.committed import transcribe_committed
from asr_server.subtitle import WordTiming


@dataclass(frozen=True)
class TurnOptions:
    language: str | None  # the model's language name
    context: str
    threshold: float


class Completed(Protocol):
    async def __call__(
        self,
        item: str,
        text: str,
        language: str | None,
        seconds: float,
        words: tuple[WordTiming, ...] = (),
        speaker: str | None = None,
    ) -> None: ...


Failed = Callable[[str, str, str], Awaitable[None]]  # item, code, message


class CommittedTurns:
    """The input buffer and a worker that transcribes committed turns in order, one engine call per piece."""

    def __init__(
        self,
        services: AppServices,
        conn: StreamConnection,
        options: Callable[[], TurnOptions],
        completed: Completed,
        failed: Failed,
        speakers: StreamSpeakers | None = None,
    ) -> None:
        self.services, self.conn, self._options, self.speakers = services, conn, options, speakers
        self._completed, self._failed = completed, failed
        self._limit = services.settings.stream_max_buffer_seconds * SAMPLE_RATE
        self._buffer: list[np.ndarray] = []  # audio since the last commit
        self.buffered = 0  # its samples, kept so an append costs O(1)
        self._jobs: asyncio.Queue[tuple[str, np.ndarray]] = asyncio.Queue()
        self._waiting = 0  # committed samples not yet transcribed (queued or running)
        self._job_done = asyncio.Event()
        self._vad: VAD | None = None  # one detector per connection, loaded on the first commit
        self._worker = asyncio.create_task(self._run())

    # --- the input buffer ---------------------------------------------------------------------
    def append(self, samples: np.ndarray) -> None:
        if self.buffered + samples.size > self._limit:
            raise InvalidField("the input audio buffer is full; commit or clear it", param="audio")
        self._buffer.append(samples)
        self.buffered += samples.size

    def take(self) -> np.ndarray | None:
        """The buffered audio, removed from the buffer (None when empty)."""
        if not self._buffer:
            return None
        audio = np.concatenate(self._buffer)
        self.clear()
        return audio

    def clear(self) -> None:
        self._buffer.clear()
        self.buffered = 0

    # --- commits ----------------------------------------------------------------------------
    def check_commit(self) -> None:
        if self.buffered < MIN_AUDIO_SAMPLES:
            held_ms = self.buffered * 1000 // SAMPLE_RATE
            raise InvalidField(
                f"buffer too small: expected at least 100ms of audio, but it holds {held_ms}ms",
                code="input_audio_buffer_commit_empty",
            )

    async def wait_for_room(self) -> None:
        """Wait until the buffer fits beside the committed audio waiting for the model; StreamClosing if it
        does not before the stream's deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.conn.seconds_left()
        while self._waiting and self._waiting + self.buffered > self._limit:
            self._job_done.clear()
            try:
                await asyncio.wait_for(self._job_done.wait(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                seconds = self.services.settings.stream_max_buffer_seconds
                waiting = f"more than {seconds:g} s of audio is waiting for the model"
                raise StreamClosing(
                    CLOSE_TRY_AGAIN, "the model cannot keep up", "buffer_full", waiting, finish=False
                ) from None

    def commit(self, item: str) -> None:
        """Queue the buffer as turn `item` (after `check_commit` and `wait_for_room`)."""
        audio = self.take()
        if audio is not None:
            self._waiting += audio.size
            self._jobs.put_nowait((item, audio))

    async def join(self) -> None:
        """Wait until every committed turn has its transcript."""
        await self._jobs.join()

    async def aclose(self) -> None:
        """Stop at once and drop every buffer of audio."""
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self.clear()
        while not self._jobs.empty():
            self._jobs.get_nowait()
            self._jobs.task_done()
        self._waiting = 0

    async def _run(self) -> None:
        settings = self.services.settings
        while True:
            item, audio = await self._jobs.get()
            samples = audio.size
            try:
                options = self._options()
                if self._vad is None:
                    self._vad = make_vad(settings)
                turn = await transcribe_committed(
                    audio,
                    make_transcriber(self.services),
                    self._vad,
                    language=options.language,
                    context=options.context,
                    threshold=options.threshold,
                    max_utterance_s=settings.stream_max_utterance_seconds,
                    metrics=self.services.streams.metrics,
                    speakers=self.speakers,
                )
                del audio  # not kept alive while the transcript is sent or the next commit awaited
                seconds = samples / SAMPLE_RATE
                await self._completed(item, turn.text, turn.language, seconds, turn.words, turn.speaker)
            except ServiceError as exc:
                await self._failed(item, exc.code, exc.message)
            except Exception:
                logger.exception("realtime transcription failed")
                await self._failed(item, "internal_error", "transcription failed")
            finally:
                self._waiting -= samples
                self._job_done.set()
                self._jobs.task_done()

"""`StreamSession`: one live audio stream turned into partial and final transcripts at constant cost.

- Fed 16 kHz float32 audio in any chunk size; the VAD sees exact 512-sample frames (in a thread:
  silero costs ~1 ms per frame and must not stall the event loop).
- A `Segmenter` cuts the stream into utterances. Each closed utterance is transcribed once (a final);
  partials re-decode only the open utterance. Finalised audio is never decoded again.
- Cost is bounded by construction: partials spend an allowance that grows by `partial_budget`
  seconds per second of stream, so decoded audio ≤ (partial_budget + 1) × stream (+ padding).
- One engine call per stream at a time. Finals go first and are never dropped; a partial that falls
  due while the engine is busy only marks "a partial is wanted", and when it runs it decodes the
  newest audio, so a slow engine skips stale partials instead of falling further behind. A partial
  still running when its utterance closes is cancelled (the final supersedes it). No partial is
  started while any stream sharing the metrics has a final waiting, or during a pause, and after
  each partial a stream waits as long as its round trip took: a busy engine gets fewer partials.
- Finals carry words timed from the utterance's VAD frames (no model call) and, when asked, a speaker label
  (its embedding runs beside the final's decode). With accurate timing a `Words` event from the aligner
  follows each final; alignments run after the waiting finals, before partials: a final never waits for one
  (but for an alignment already running).
- The model is reached only through the injected `transcribe(samples, language, context)` callable, the
  aligner through `WordAligner`, speaker embeddings through `SpeakerLabels`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from loguru import logger

from asr_server.errors import QueueFull, ServiceError
from asr_server.media import SAMPLE_RATE
from asr_server.media.vad import VAD
from asr_server.streaming.events import Final, Partial, SessionError, SessionEvent, SpeechStarted, SpeechStopped, Words
from asr_server.streaming.metrics import SessionStats, StreamMetrics
from asr_server.streaming.segmenter import FRAME_SAMPLES, Segmenter, SegmenterConfig, Started, Utterance
from asr_server.streaming.words import (
    PendingWords,
    SpeakerLabels,
    WordAligner,
    WordTimingMode,
    aligned_words,
    fast_words,
    speaker_of,
)

TranscribeFn = Callable[[np.ndarray, str | None, str], Awaitable[tuple[str, str | None]]]


@dataclass(frozen=True)
class StreamConfig:
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    language: str | None = None  # the model's language name ("English"); None = detect
    context: str = ""
    partials: bool = True
    partial_interval_s: float = 1.0  # least new audio between two partials of one utterance
    partial_budget: float = 1.5  # partial decode seconds allowed per stream second
    final_retry_s: float = 30.0  # how long a final is retried while the queue is full
    # Finals' words: "fast" (from the VAD frames), "accurate" (fast, then a Words event from the aligner when
    # one is there), "none" (no words).
    word_timing: WordTimingMode = "fast"


@dataclass
class _PendingFinal:
    utterance: Utterance
    queued_at: float


class StreamSession:
    def __init__(
        self,
        transcribe: TranscribeFn,
        vad: VAD,
        config: StreamConfig | None = None,
        *,
        metrics: StreamMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        vad_in_thread: bool = True,
        aligner: WordAligner | None = None,
        speakers: SpeakerLabels | None = None,
    ) -> None:
        self.config = config or StreamConfig()
        self._transcribe = transcribe
        self._aligner = aligner
        self._speakers = speakers
        self._aligns: deque[PendingWords] = deque()  # finals out, their aligned words still to come
        self._vad = vad
        self._vad_in_thread = vad_in_thread
        self._clock = clock
        self._metrics = metrics or StreamMetrics()
        self._segmenter = Segmenter(self.config.segmenter)
        self.stats = SessionStats()
        self.events: asyncio.Queue[SessionEvent] = asyncio.Queue()
        self._leftover = np.zeros(0, np.float32)
        self._finals: deque[_PendingFinal | asyncio.Future[None]] = deque()
        self._pending_samples = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever a final was decoded (buffer room)
        self._partial_due = False
        self._partial_task: tuple[int, asyncio.Future[tuple[str, str | None]]] | None = None
        self._partial_segment = -1
        self._partial_length = 0.0
        self._partial_text = ""
        self._allowance = 0.0
        self._partial_not_before = 0.0
        self._loop_task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> StreamSession:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="stream-decode")

    async def aclose(self) -> None:
        """Stop at once: cancel queued and running engine work, drop pending finals."""
        self._cancel_partial()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for item in self._finals:
            if isinstance(item, asyncio.Future) and not item.done():
                item.cancel()
            elif isinstance(item, _PendingFinal):
                self._metrics.finals_pending -= 1
        self._finals.clear()
        self._aligns.clear()
        self._pending_samples = 0
        self._vad.reset()

    # --- input ---------------------------------------------------------------------------
    async def feed(self, samples: np.ndarray) -> None:
        """Add 16 kHz mono float32 audio; whole 512-sample frames go through the VAD now."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        data = np.concatenate((self._leftover, samples)) if self._leftover.size else samples
        count = data.size // FRAME_SAMPLES
        self._leftover = data[count * FRAME_SAMPLES :].copy()
        if count:
            await self._push_frames(data[: count * FRAME_SAMPLES].reshape(count, FRAME_SAMPLES).copy())

    async def flush(self) -> None:
        """Finalise what was heard so far (the open utterance, if it holds speech)."""
        if self._leftover.size:
            frame, self._leftover = self._leftover, np.zeros(0, np.float32)
            await self._push_frames([frame])
        utterance = self._segmenter.flush()
        if utterance is not None:
            self._on_segment_events([utterance])

    async def finish(self) -> None:
        """Flush, then wait until every final (and its aligned words) has been decoded and emitted."""
        await self.flush()
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._finals.append(marker)
        self._wake.set()
        await marker

    def clear(self) -> None:
        """Discard the open utterance and unprocessed samples without transcribing them."""
        self._leftover = np.zeros(0, np.float32)
        self._segmenter.clear()
        self._partial_due = False
        self._cancel_partial()

    # --- state ---------------------------------------------------------------------------
    @property
    def buffered_seconds(self) -> float:
        """Audio held but not yet done with: pending finals and alignments plus the open utterance."""
        return (self._pending_samples + self._segmenter.open_samples) / SAMPLE_RATE

    @property
    def open_segment_id(self) -> int | None:
        """The utterance being heard now (confirmed speech), if any."""
        segment = self._segmenter.open_segment
        return segment[0] if segment is not None else None

    @property
    def position_seconds(self) -> float:
        return self._segmenter.position / SAMPLE_RATE

    def lag_seconds(self) -> float:
        """Age of the oldest final waiting to be decoded: how far behind this stream is."""
        for item in self._finals:
            if isinstance(item, _PendingFinal):
                return self._clock() - item.queued_at
        return 0.0

    async def wait_for_room(self, max_buffer_s: float, timeout: float) -> bool:
        """Wait until fewer than `max_buffer_s` seconds are buffered; False after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.buffered_seconds > max_buffer_s:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    # --- internals: segmentation ---------------------------------------------------------
    async def _push_frames(self, frames: np.ndarray | list[np.ndarray]) -> None:
        if self._vad_in_thread:
            probabilities = await asyncio.to_thread(self._run_vad, frames)
        else:
            probabilities = self._run_vad(frames)
        now = self._clock()
        events: list[Started | Utterance] = []
        total = 0
        for frame, probability in zip(frames, probabilities, strict=True):
            events.extend(self._segmenter.push(frame, probability, now))
            total += len(frame)
        self._on_segment_events(events)
        seconds = total / SAMPLE_RATE
        self.stats.audio_seconds += seconds
        self._metrics.audio_seconds += seconds
        # The allowance never goes negative and grows by the budget: partial cost ≤ budget × stream.
        self._allowance += self.config.partial_budget * seconds
        self._schedule_partial()

    def _run_vad(self, frames: np.ndarray | list[np.ndarray]) -> list[float]:
        return [self._vad.process_frame(frame) for frame in frames]

    def _on_segment_events(self, events: list[Started | Utterance]) -> None:
        for event in events:
            if isinstance(event, Started):
                self.events.put_nowait(SpeechStarted(event.segment_id, event.start / SAMPLE_RATE))
                continue
            self.events.put_nowait(SpeechStopped(event.segment_id, event.end / SAMPLE_RATE, event.reason))
            if self._partial_task is not None and self._partial_task[0] == event.segment_id:
                self._cancel_partial()
            self._finals.append(_PendingFinal(event, self._clock()))
            self._pending_samples += event.audio.size
            self._metrics.finals_pending += 1
            self._wake.set()

    def _schedule_partial(self) -> None:
        if self.config.partials and self._partial_wanted() is not None:
            self._partial_due = True
            self._wake.set()

    def _partial_wanted(self) -> int | None:
        """The open segment's id when a partial is due for it now (interval and allowance permit)."""
        segment = self._segmenter.open_segment
        # In a pause the final is probably near: a partial now would only delay it.
        if segment is None or self._segmenter.in_pause:
            return None
        segment_id, start, end = segment
        length = (end - start) / SAMPLE_RATE
        done = self._partial_length if segment_id == self._partial_segment else 0.0
        if length - done < self.config.partial_interval_s or self._allowance < length:
            return None
        # Finals first, across all streams: no new partial joins the queue while a final waits.
        if self._clock() < self._partial_not_before or self._metrics.finals_pending > 0:
            return None
        return segment_id

    def _cancel_partial(self) -> None:
        if self._partial_task is not None:
            self._partial_task[1].cancel()

    # --- internals: the decode loop ------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                head = self._finals[0] if self._finals else None
                if isinstance(head, _PendingFinal):
                    await self._finalise(head)
                    self._pending_samples -= head.utterance.audio.size
                    self._metrics.finals_pending -= 1
                    self._progress.set()
                    self._finals.popleft()
                elif self._aligns:  # after the waiting finals, before a `finish` marker: stop waits for words
                    await self._align(self._aligns[0])
                    self._aligns.popleft()
                elif head is not None:
                    if not head.done():
                        head.set_result(None)
                    self._finals.popleft()
                elif self._partial_due:
                    self._partial_due = False
                    await self._run_partial()
                else:
                    break

    async def _run_partial(self) -> None:
        segment_id = self._partial_wanted()  # re-checked: the audio grew or the utterance closed meanwhile
        if segment_id is None:
            return
        audio = self._segmenter.open_audio()
        _, start, _ = self._segmenter.open_segment or (0, 0, 0)
        length = audio.size / SAMPLE_RATE
        self._allowance -= length
        if segment_id != self._partial_segment:
            self._partial_segment, self._partial_text = segment_id, ""
        self._partial_length = length
        self.stats.partial_decoded_seconds += length
        self._metrics.partial_decoded_seconds += length
        task = asyncio.ensure_future(self._transcribe(audio, self.config.language, self.config.context))
        self._partial_task = (segment_id, task)
        sent = self._clock()
        try:
            await asyncio.wait({task})
        finally:
            self._partial_task = None
            if not task.done():
                task.cancel()
        # Back off by as long as the round trip took: a busy engine gets fewer partials from every
        # stream, so finals (and other streams) are not stuck behind them.
        self._partial_not_before = self._clock() + (self._clock() - sent)
        current = self._segmenter.open_segment
        if task.cancelled() or task.exception() is not None or current is None or current[0] != segment_id:
            if not task.cancelled() and task.exception() is not None:
                logger.debug("partial transcription failed: {}", task.exception())
            self.stats.partials_dropped += 1
            self._metrics.partials_dropped += 1
            return
        text = task.result()[0].strip()
        if text and text != self._partial_text:
            self._partial_text = text
            self.stats.partials += 1
            self._metrics.partials_emitted += 1
            self.events.put_nowait(Partial(segment_id, text, start / SAMPLE_RATE, (start + audio.size) / SAMPLE_RATE))

    async def _finalise(self, pending: _PendingFinal) -> None:
        utterance = pending.utterance
        seconds = utterance.audio.size / SAMPLE_RATE
        self.stats.final_decoded_seconds += seconds
        self.stats.final_ranges.append((utterance.start, utterance.end))
        self._metrics.final_decoded_seconds += seconds
        speakers = self._speakers
        embedding = asyncio.ensure_future(speakers.embed(utterance.audio)) if speakers is not None else None
        decoded = None
        try:
            decoded = await self._final_text(utterance)
        finally:
            if decoded is None and embedding is not None:
                embedding.cancel()
        if decoded is None:
            return
        text, language = decoded[0].strip(), decoded[1] or self.config.language
        timing = self.config.word_timing
        words = None if timing == "none" else tuple(fast_words(utterance, text, self.config.segmenter.threshold))
        speaker = None if speakers is None or embedding is None else await speaker_of(speakers, embedding, text)
        now = self._clock()
        delay = max(0.0, now - utterance.speech_end_wall)
        self.stats.finals += 1
        self._metrics.record_final(delay, now - pending.queued_at)
        start, end = utterance.start / SAMPLE_RATE, utterance.end / SAMPLE_RATE
        self.events.put_nowait(Final(utterance.segment_id, text, language, start, end, delay, words, speaker))
        aligner = self._aligner
        if text and words and timing == "accurate" and aligner is not None and aligner.available:
            self._aligns.append(PendingWords(utterance, text, language, words))
            self._pending_samples += utterance.audio.size

    async def _final_text(self, utterance: Utterance) -> tuple[str, str | None] | None:
        """The utterance's text and language, or None after reporting why there is none."""
        deadline = self._clock() + self.config.final_retry_s
        while True:
            try:
                return await self._transcribe(utterance.audio, self.config.language, self.config.context)
            except QueueFull as exc:
                # Finals are never dropped for a momentary overload: wait for room and try again.
                if self._clock() >= deadline:
                    self._error(exc.code, exc.message, utterance.segment_id)
                    return None
                await asyncio.sleep(0.2)
            except ServiceError as exc:
                self._error(exc.code, exc.message, utterance.segment_id)
                return None
            except Exception:
                logger.exception("stream final transcription failed")
                self._error("internal_error", "transcription failed", utterance.segment_id)
                return None

    async def _align(self, pending: PendingWords) -> None:
        size = pending.utterance.audio.size
        self._metrics.aligned_seconds += size / SAMPLE_RATE
        try:
            assert self._aligner is not None  # only queued with one
            words, timing = await aligned_words(self._aligner, pending)
        finally:
            self._pending_samples -= size
            self._progress.set()
        self.events.put_nowait(Words(pending.utterance.segment_id, words, timing))

    def _error(self, code: str, message: str, segment_id: int | None) -> None:
        self._metrics.errors += 1
        self.events.put_nowait(SessionError(code, message, segment_id))

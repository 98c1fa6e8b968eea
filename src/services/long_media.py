"""Long media, piece by piece: a file of hours is never held whole, and never floods the queue.

The file is decoded progressively (`media.audio.open_audio_stream`) and cut into pieces at quiet points as it
goes (`media.pieces.iter_pieces`, the same cuts `split_at_quiet_points` makes on a whole array). At most
`pieces_in_flight` pieces are in the queue or the engine at a time; the next one is decoded only when one of
them finishes, so memory is bounded by the pieces in flight, not by the file. The request was admitted once;
its later pieces are never refused by the queue's bound (`admitted=True`), and they keep the request's priority,
so live streams and other users' requests still go first.

Pieces a resumed job already finished (`done`) are cut again, at the same points, and skipped.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from asr_server.engines import Transcript
from asr_server.media import SAMPLE_RATE
from asr_server.media.pieces import AudioPiece
from asr_server.queue import PRIORITY_HTTP
from asr_server.services.segments import SpeechFrames
from asr_server.services.subtitles import ChunkTiming, PieceOutcome, SubtitleMode, SubtitlePipeline
from asr_server.services.transcription import TextDelta
from asr_server.subtitle import WordTiming
from asr_server.text.units import join_pieces

OnPiece = Callable[[PieceOutcome], Awaitable[None]]


class LongMediaPipeline:
    def __init__(self, subtitles: SubtitlePipeline, pieces_in_flight: int) -> None:
        self._subtitles = subtitles
        self._pieces_in_flight = max(1, pieces_in_flight)

    @property
    def piece_seconds(self) -> float:
        return self._subtitles.piece_seconds

    def text_deltas(
        self, pieces: Iterator[AudioPiece], *, language: str | None, context: str
    ) -> AsyncIterator[TextDelta]:
        """The text of `pieces` as deltas in audio order (each with its joining space), one as soon as its piece
        and every piece before it are done, as `TranscriptionService.transcribe_progressively` gives for whole
        audio. Closing the iterator early cancels the pieces not yet run."""
        return _text_deltas(self, pieces, language=language, context=context)

    async def run(
        self,
        pieces: Iterator[AudioPiece],
        *,
        language: str | None,
        context: str,
        mode: SubtitleMode,
        priority: int = PRIORITY_HTTP,
        measure_speech: bool = False,
        timed: bool = True,
        admit_first: bool = True,
        done: Mapping[int, PieceOutcome] | None = None,
        on_piece: OnPiece | None = None,
    ) -> list[PieceOutcome]:
        """Every piece's outcome, in order. `pieces` is a blocking iterator (it decodes): it is advanced in a
        thread. `timed=False`: text only, no word timing. `admit_first`: the first piece run is subject to the
        queue's bound (429 when it is full); jobs, admitted when they were accepted, pass False. `on_piece` is
        awaited as each new piece finishes. Errors (the decoder's, a piece's) cancel the pieces in flight and
        propagate."""
        done = dict(done or {})
        outcomes: dict[int, PieceOutcome] = dict(done)
        running: set[asyncio.Task[PieceOutcome]] = set()
        admitted = not admit_first

        async def run_one(piece: AudioPiece, admitted: bool) -> PieceOutcome:
            outcome = await self._subtitles.run_piece(
                piece.index,
                piece.samples,
                piece.start_sample / SAMPLE_RATE,
                language=language,
                context=context,
                mode=mode,
                priority=priority,
                measure_speech=measure_speech,
                admitted=admitted,
                timed=timed,
            )
            if on_piece is not None:
                await on_piece(outcome)
            return outcome

        async def collect(block: bool) -> None:
            if not running:
                return
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED, timeout=None if block else 0)
            for task in finished:
                running.discard(task)
                outcome = task.result()  # raises the piece's error
                outcomes[outcome.chunk.index] = outcome

        # One thread decodes, and is waited for before returning, even when this run is cancelled: the caller
        # closes the file once `run` returns, and must not close it under a read still in progress.
        decoder = ThreadPoolExecutor(1, thread_name_prefix="long-media-decode")
        loop = asyncio.get_running_loop()
        try:
            while True:
                piece = await loop.run_in_executor(decoder, next, pieces, None)
                if piece is None:
                    break
                stored = done.get(piece.index)
                if stored is not None and _same_span(stored, piece):
                    continue
                running.add(asyncio.ensure_future(run_one(piece, admitted)))
                admitted = True
                await collect(block=len(running) >= self._pieces_in_flight)
            while running:
                await collect(block=True)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            await asyncio.shield(asyncio.to_thread(decoder.shutdown, wait=True))
        return [outcomes[index] for index in sorted(outcomes)]


def _same_span(outcome: PieceOutcome, piece: AudioPiece) -> bool:
    """A stored piece is reused only where the file was cut at the same points again."""
    return abs(outcome.chunk.start - piece.start) < 1e-6 and abs(outcome.chunk.end - piece.end) < 1e-6


# --- progressive text ------------------------------------------------------------------------------------------
async def _text_deltas(
    pipeline: LongMediaPipeline, pieces: Iterator[AudioPiece], *, language: str | None, context: str
) -> AsyncIterator[TextDelta]:
    """Text deltas in audio order (see `LongMediaPipeline.text_deltas`)."""
    finished: dict[int, PieceOutcome] = {}
    arrived = asyncio.Event()

    async def keep(outcome: PieceOutcome) -> None:
        finished[outcome.chunk.index] = outcome
        arrived.set()

    run = asyncio.ensure_future(
        pipeline.run(pieces, language=language, context=context, mode=SubtitleMode.fast, timed=False, on_piece=keep)
    )
    emitted, following = "", 0
    try:
        while True:
            while following in finished:
                outcome = finished.pop(following)
                following += 1
                joined = join_pieces([emitted, outcome.transcript.text])
                if len(joined) > len(emitted):
                    yield TextDelta(joined[len(emitted) :], outcome.transcript)
                    emitted = joined
            if run.done():
                run.result()  # raises the run's error
                if following not in finished:
                    return
                continue
            arrived.clear()
            waiter = asyncio.ensure_future(arrived.wait())
            await asyncio.wait([run, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


# --- a piece's outcome as JSON (jobs store it, so a finished piece is never run again) ----------------------
def outcome_to_json(outcome: PieceOutcome) -> dict[str, Any]:
    chunk = outcome.chunk
    data: dict[str, Any] = {
        "index": chunk.index,
        "start": chunk.start,
        "end": chunk.end,
        "text": chunk.text,
        "language": chunk.language,
        "mode": chunk.mode.value,
        "transcript": outcome.transcript.to_wire(),
        "words": [[w.text, w.start, w.end] for w in outcome.words],
    }
    if outcome.frames is not None:
        probabilities = np.asarray(outcome.frames.probabilities, dtype=np.float16)  # 2 bytes a 32 ms frame
        data["frames"] = {
            "offset": outcome.frames.offset,
            "float16": base64.b64encode(probabilities.tobytes()).decode("ascii"),
        }
    return data


def outcome_from_json(data: Mapping[str, Any]) -> PieceOutcome:
    chunk = ChunkTiming(
        index=int(data["index"]),
        start=float(data["start"]),
        end=float(data["end"]),
        text=str(data["text"]),
        language=str(data["language"]),
        mode=SubtitleMode(data["mode"]),
    )
    frames = None
    if data.get("frames"):
        raw = base64.b64decode(data["frames"]["float16"])
        frames = SpeechFrames(float(data["frames"]["offset"]), np.frombuffer(raw, dtype=np.float16).astype(np.float32))
    words = [WordTiming(text=str(t), start=float(a), end=float(b)) for t, a, b in data["words"]]
    return PieceOutcome(chunk=chunk, transcript=Transcript.from_wire(data["transcript"]), words=words, frames=frames)

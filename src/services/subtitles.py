"""Timed transcription: audio → chunks → transcripts → word timings → cues.

Accurate mode aligns each chunk's own transcript with Qwen3-ForcedAligner: audio is cut at quiet points
into chunks of at most ALIGN_CHUNK_SECONDS (60 s on CPU, 180 s, the aligner's input limit, on a GPU), and
each chunk is transcribed and aligned on its own; offsets are added back. A chunk the aligner fails on
falls back to fast timing, and the result lists it. Fast mode spreads each chunk's text over the speech
the VAD finds in it.
All model work goes through the queue (transcribe and align jobs batch with other requests).
The VAD runs once per chunk: its frame probabilities give fast timing its speech regions and verbose_json
its `no_speech_prob` (in accurate mode only when `measure_speech` asks for them).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from loguru import logger

from asr_server.engines import AlignedUnit, AlignItem, TranscribeItem, Transcript
from asr_server.errors import ServiceError
from asr_server.media import SAMPLE_RATE
from asr_server.media.audio import DecodedAudio
from asr_server.media.vad import frame_probabilities, load_vad, regions_from_probabilities, split_at_quiet_points
from asr_server.queue import PRIORITY_HTTP, JobKind
from asr_server.services.segments import SpeechFrames
from asr_server.services.transcription import TranscriptionService
from asr_server.subtitle import (
    CueRules,
    WordTiming,
    build_cues,
    fast_timings,
    join_word_runs,
    join_words,
    restore_punctuation,
)
from asr_server.text.cues import Cue
from asr_server.text.units import join_pieces

# qwen-asr's MAX_FORCE_ALIGN_INPUT_SECONDS; chunks for timing never exceed it.
ALIGNER_MAX_SECONDS = 180.0
# The aligner needs a language; this one is used when the model did not name one.
FALLBACK_ALIGN_LANGUAGE = "English"


class SubtitleMode(str, enum.Enum):
    accurate = "accurate"
    fast = "fast"


@dataclass(frozen=True)
class ChunkTiming:
    index: int
    start: float
    end: float
    text: str
    language: str
    mode: SubtitleMode  # the timing actually used for this chunk


@dataclass(frozen=True)
class TimedTranscription:
    text: str
    language: str | None
    duration: float
    words: list[WordTiming]
    cues: list[Cue]
    chunks: list[ChunkTiming] = field(default_factory=list)
    mode: SubtitleMode = SubtitleMode.fast
    transcripts: list[Transcript] = field(default_factory=list)  # the engine's, one per chunk, in order
    speech_frames: list[SpeechFrames] = field(default_factory=list)  # per chunk, where the VAD ran

    @property
    def fallback_chunks(self) -> list[int]:
        """Chunks that asked for accurate timing but got fast timing (aligner failed)."""
        if self.mode != SubtitleMode.accurate:
            return []
        return [chunk.index for chunk in self.chunks if chunk.mode == SubtitleMode.fast]


@dataclass(frozen=True)
class PieceOutcome:
    """One piece transcribed and timed: what a long file's pieces leave behind (and a job stores)."""

    chunk: ChunkTiming
    transcript: Transcript
    words: list[WordTiming]
    frames: SpeechFrames | None = None


async def assemble(
    outcomes: Sequence[PieceOutcome], duration: float, *, mode: SubtitleMode, rules: CueRules, language: str | None
) -> TimedTranscription:
    """The timed transcription of consecutive pieces (in audio order): their words, cues over all of them."""
    words = join_word_runs([outcome.words for outcome in outcomes])
    cues = await asyncio.to_thread(build_cues, words, duration, rules)
    languages = [outcome.chunk.language for outcome in outcomes]
    return TimedTranscription(
        text=join_pieces(outcome.transcript.text for outcome in outcomes),
        language=majority_language(languages) or language,
        duration=duration,
        words=words,
        cues=cues,
        chunks=[outcome.chunk for outcome in outcomes],
        mode=mode,
        transcripts=[outcome.transcript for outcome in outcomes],
        speech_frames=[outcome.frames for outcome in outcomes if outcome.frames is not None],
    )


def majority_language(languages: Sequence[str]) -> str | None:
    """The language named most often ("" = unnamed), None when none is named."""
    named = [lang for lang in languages if lang]
    return max(set(named), key=named.count) if named else None


def _speech_probabilities(samples: np.ndarray) -> np.ndarray:
    return frame_probabilities(np.asarray(samples, dtype=np.float32), load_vad())


def _fast_words(probabilities: np.ndarray, samples: np.ndarray, text: str, offset: float) -> list[WordTiming]:
    duration = len(samples) / SAMPLE_RATE
    regions = regions_from_probabilities(probabilities, duration) if len(samples) else []
    return fast_timings(text, regions, offset=offset, duration=duration)


def _aligned_words(units: list[AlignedUnit], text: str, offset: float) -> list[WordTiming]:
    shifted = [WordTiming(text=u.text, start=u.start + offset, end=u.end + offset) for u in units]
    return restore_punctuation(text, shifted)


class SubtitlePipeline:
    def __init__(
        self,
        service: TranscriptionService,
        aligner_available: Callable[[], bool],
        chunk_seconds: float = ALIGNER_MAX_SECONDS,
    ) -> None:
        """`aligner_available` is asked on every request: engines hosted elsewhere (gateway mode, Ray) learn
        whether their host has a forced aligner only when the model loads."""
        self._service = service
        self._aligner_available = aligner_available
        self._chunk_seconds = min(chunk_seconds, ALIGNER_MAX_SECONDS)

    @property
    def aligner_available(self) -> bool:
        return self._aligner_available()

    def default_mode(self) -> SubtitleMode:
        return SubtitleMode.accurate if self.aligner_available else SubtitleMode.fast

    async def run(
        self,
        audio: DecodedAudio,
        *,
        language: str | None,
        context: str,
        mode: SubtitleMode,
        rules: CueRules,
        priority: int = PRIORITY_HTTP,
        measure_speech: bool = False,
    ) -> TimedTranscription:
        samples = audio.samples
        ranges = split_at_quiet_points(samples, SAMPLE_RATE, self._chunk_seconds)
        outcomes = await asyncio.gather(
            *(
                self.run_piece(
                    index,
                    samples[a:b],
                    a / SAMPLE_RATE,
                    language=language,
                    context=context,
                    mode=mode,
                    priority=priority,
                    measure_speech=measure_speech,
                )
                for index, (a, b) in enumerate(ranges)
            )
        )
        return await assemble(outcomes, audio.duration, mode=mode, rules=rules, language=language)

    @property
    def piece_seconds(self) -> float:
        """Longest piece transcribed and timed at once."""
        return self._chunk_seconds

    async def run_piece(
        self,
        index: int,
        samples: np.ndarray,
        offset: float,
        *,
        language: str | None,
        context: str,
        mode: SubtitleMode,
        priority: int = PRIORITY_HTTP,
        measure_speech: bool = False,
        admitted: bool = False,
        timed: bool = True,
    ) -> PieceOutcome:
        """Transcribe one piece (at most `piece_seconds`) and, when `timed`, time its words; times are `offset` +
        seconds in it."""
        transcript: Transcript = await self._service.submit(
            JobKind.transcribe,
            TranscribeItem(audio=samples, language=language, context=context),
            priority=priority,
            admitted=admitted,
        )
        piece_language = transcript.language or language or ""
        if not timed:
            end = offset + len(samples) / SAMPLE_RATE
            chunk = ChunkTiming(index, offset, end, transcript.text.strip(), piece_language, mode)
            return PieceOutcome(chunk=chunk, transcript=transcript, words=[])
        words, chunk, frames = await self._time_chunk(
            index, samples, offset, transcript.text.strip(), piece_language, mode, priority, measure_speech, admitted
        )
        return PieceOutcome(chunk=chunk, transcript=transcript, words=words, frames=frames)

    async def aligned_words(
        self,
        samples: np.ndarray,
        text: str,
        language: str | None,
        *,
        offset: float,
        priority: int,
        admitted: bool = False,
    ) -> list[WordTiming]:
        """The forced aligner's timing of `text` spoken in `samples`, through the queue (times + `offset`), with
        the transcript's punctuation restored. Raises ServiceError when it fails or times nothing."""
        units: list[AlignedUnit] = await self._service.submit(
            JobKind.align,
            AlignItem(audio=samples, text=text, language=language or FALLBACK_ALIGN_LANGUAGE),
            priority=priority,
            admitted=admitted,
        )
        words = _aligned_words(units, text, offset)
        if not words:
            raise ServiceError("the aligner returned no items")
        return words

    async def _time_chunk(
        self,
        index: int,
        samples: np.ndarray,
        offset: float,
        text: str,
        language: str,
        mode: SubtitleMode,
        priority: int,
        measure_speech: bool,
        admitted: bool = False,
    ) -> tuple[list[WordTiming], ChunkTiming, SpeechFrames | None]:
        end = offset + len(samples) / SAMPLE_RATE
        used = mode
        words: list[WordTiming] = []
        probabilities = None
        if measure_speech or (text and mode == SubtitleMode.fast):
            probabilities = await asyncio.to_thread(_speech_probabilities, samples)
        if text and mode == SubtitleMode.accurate:
            try:
                words = await self.aligned_words(
                    samples, text, language, offset=offset, priority=priority, admitted=admitted
                )
            except ServiceError as exc:
                logger.warning("aligner failed on chunk {} ({}); using fast timing for it", index, exc.message)
                used = SubtitleMode.fast
        if text and used == SubtitleMode.fast:
            if probabilities is None:  # accurate timing failed on this chunk
                probabilities = await asyncio.to_thread(_speech_probabilities, samples)
            words = await asyncio.to_thread(_fast_words, probabilities, samples, text, offset)
        if words and join_words(words).strip() == "":
            words = []
        chunk = ChunkTiming(index=index, start=offset, end=end, text=text, language=language, mode=used)
        return words, chunk, SpeechFrames(offset, probabilities) if probabilities is not None else None

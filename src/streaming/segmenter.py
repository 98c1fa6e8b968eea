"""Utterance segmentation of a live stream from per-frame speech probabilities (pure, synchronous).

The segmenter sees each 512-sample frame once with its VAD probability and decides where utterances
begin and end. It never looks back past the end of the last closed utterance, so audio that was
finalised can never be part of a later utterance (it is never decoded again). Memory is bounded: the
open utterance is at most `max_utterance_s` long (plus the prefix), older audio is dropped.

Hysteresis as silero's `get_speech_timestamps`: speech starts at `threshold` and ends after
`min_silence_s` below `threshold - 0.15`. An utterance is announced (`Started`) only once it holds
`min_speech_s` of speech, so clicks and coughs never reach the model or the client.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from asr_server.media import SAMPLE_RATE

FRAME_SAMPLES = 512
CloseReason = Literal["pause", "max_length", "flush"]


@dataclass(frozen=True)
class SegmenterConfig:
    threshold: float = 0.5
    min_silence_s: float = 0.5
    prefix_padding_s: float = 0.3
    tail_padding_s: float = 0.2
    min_speech_s: float = 0.25
    max_utterance_s: float = 15.0
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be between 0 and 1")
        if self.max_utterance_s < 2.0:
            raise ValueError("max_utterance_s must be at least 2 s")
        if min(self.min_silence_s, self.prefix_padding_s, self.tail_padding_s, self.min_speech_s) < 0:
            raise ValueError("durations must not be negative")


@dataclass(frozen=True)
class Started:
    """An utterance was confirmed (it holds enough speech); `start` is its first sample."""

    segment_id: int
    start: int


@dataclass(frozen=True)
class Utterance:
    """A closed utterance: samples `[start, end)` of the stream, to be finalised exactly once."""

    segment_id: int
    start: int
    end: int
    audio: np.ndarray = field(repr=False)
    reason: CloseReason
    speech_end_wall: float  # clock time the last speech frame of it arrived
    # Each frame's first sample (from `start`) and its speech probability: where the speech lies inside.
    frame_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)


@dataclass
class _Open:
    segment_id: int
    start: int
    frames: list[np.ndarray]
    frame_starts: list[int]
    levels_db: list[float]
    probabilities: list[float]
    speech_samples: int = 0
    silence_samples: int = 0
    last_speech_end: int = 0
    confirmed: bool = False
    speech_end_wall: float = 0.0

    @property
    def end(self) -> int:
        return self.frame_starts[-1] + len(self.frames[-1])


def _level_db(frame: np.ndarray) -> float:
    return 10.0 * math.log10(float(np.mean(np.square(frame, dtype=np.float64))) + 1e-12) if frame.size else -120.0


class Segmenter:
    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = config or SegmenterConfig()
        sr = self.config.sample_rate
        self._min_silence = round(self.config.min_silence_s * sr)
        self._min_speech = round(self.config.min_speech_s * sr)
        self._tail = round(self.config.tail_padding_s * sr)
        self._prefix = round(self.config.prefix_padding_s * sr)
        self._max_len = round(self.config.max_utterance_s * sr)
        self._neg_threshold = max(self.config.threshold - 0.15, 0.01)
        self._ring: deque[tuple[int, np.ndarray, float]] = deque()  # recent frames, for the prefix padding
        self._open: _Open | None = None
        self._next_id = 0
        self.position = 0  # samples seen so far
        self.committed_until = 0  # no later utterance may start before this sample

    # --- state ---------------------------------------------------------------------------
    @property
    def open_segment(self) -> tuple[int, int, int] | None:
        """(segment_id, start, end) of the confirmed open utterance, or None."""
        utt = self._open
        return (utt.segment_id, utt.start, utt.end) if utt is not None and utt.confirmed else None

    def open_audio(self) -> np.ndarray:
        """Samples of the confirmed open utterance so far (empty when there is none)."""
        utt = self._open
        if utt is None or not utt.confirmed:
            return np.zeros(0, np.float32)
        return np.concatenate(utt.frames)

    @property
    def in_pause(self) -> bool:
        """The open utterance has gone quiet: it may be about to close."""
        return self._open is not None and self._open.silence_samples > 0

    @property
    def open_samples(self) -> int:
        utt = self._open
        return utt.end - utt.start if utt is not None else 0

    # --- input ---------------------------------------------------------------------------
    def push(self, frame: np.ndarray, probability: float, wall: float = 0.0) -> list[Started | Utterance]:
        """Consume the next frame of the stream (normally 512 samples) and its speech probability."""
        frame = np.asarray(frame, dtype=np.float32).reshape(-1)
        start = self.position
        self.position += frame.size
        events: list[Started | Utterance] = []
        utt = self._open
        if utt is None:
            if probability >= self.config.threshold:
                utt = self._open = self._begin(frame, start, probability)
                self._count_speech(utt, frame, wall, events)
            else:
                self._remember(start, frame, probability)
            return events
        utt.frames.append(frame)
        utt.frame_starts.append(start)
        utt.levels_db.append(_level_db(frame))
        utt.probabilities.append(probability)
        if probability >= self.config.threshold:
            utt.silence_samples = 0
            self._count_speech(utt, frame, wall, events)
        elif probability < self._neg_threshold or utt.silence_samples > 0:
            utt.silence_samples += frame.size
        if utt.silence_samples >= self._min_silence:
            closed = self._close(utt, min(utt.last_speech_end + self._tail, utt.end), "pause")
            if closed is not None:
                events.append(closed)
        elif utt.confirmed and utt.end - utt.start >= self._max_len:
            events.extend(self._cut(utt, wall))
        return events

    def flush(self) -> Utterance | None:
        """Close the open utterance now (client asked to finalise); None when it held too little speech."""
        utt = self._open
        if utt is None:
            return None
        end = utt.end if utt.silence_samples == 0 else min(utt.last_speech_end + self._tail, utt.end)
        return self._close(utt, end, "flush")

    def clear(self) -> None:
        """Drop the open utterance without finalising it (its audio is never decoded)."""
        if self._open is not None:
            self.committed_until = max(self.committed_until, self._open.end)
        self._open = None
        self._ring.clear()

    # --- internals -----------------------------------------------------------------------
    def _remember(self, start: int, frame: np.ndarray, probability: float) -> None:
        self._ring.append((start, frame, probability))
        while self._ring and self._ring[0][0] + len(self._ring[0][1]) <= start + frame.size - self._prefix:
            self._ring.popleft()

    def _begin(self, frame: np.ndarray, start: int, probability: float) -> _Open:
        prefix = [(s, f, p) for s, f, p in self._ring if s >= self.committed_until and s >= start - self._prefix]
        self._ring.clear()
        frames = [f for _, f, _ in prefix] + [frame]
        starts = [s for s, _, _ in prefix] + [start]
        probabilities = [p for _, _, p in prefix] + [probability]
        utt = _Open(self._next_id, starts[0], frames, starts, [_level_db(f) for f in frames], probabilities)
        self._next_id += 1
        return utt

    def _count_speech(self, utt: _Open, frame: np.ndarray, wall: float, events: list[Started | Utterance]) -> None:
        utt.speech_samples += frame.size
        utt.last_speech_end = utt.end
        utt.speech_end_wall = wall
        if not utt.confirmed and utt.speech_samples >= self._min_speech:
            utt.confirmed = True
            events.append(Started(utt.segment_id, utt.start))

    def _close(self, utt: _Open, end: int, reason: CloseReason) -> Utterance | None:
        """Finish `utt` at sample `end`; frames after it go back to the prefix ring."""
        self._open = None
        self._ring.clear()
        keep: list[np.ndarray] = []
        for start, frame, probability in zip(utt.frame_starts, utt.frames, utt.probabilities, strict=True):
            if start + frame.size <= end:
                keep.append(frame)
            elif start < end:
                keep.append(frame[: end - start])
                self._remember(end, frame[end - start :], probability)
            else:
                self._remember(start, frame, probability)
        if not utt.confirmed or end <= utt.start:
            return None
        self.committed_until = end
        kept = len(keep)
        return Utterance(
            utt.segment_id,
            utt.start,
            end,
            np.concatenate(keep),
            reason,
            utt.speech_end_wall,
            np.asarray(utt.frame_starts[:kept], np.int64) - utt.start,
            np.asarray(utt.probabilities[:kept], np.float32),
        )

    def _cut(self, utt: _Open, wall: float) -> list[Started | Utterance]:
        """The utterance reached its maximum length: finalise up to its quietest point, keep the rest open."""
        count = len(utt.frames)
        levels = np.asarray(utt.levels_db)
        # Smooth over ~100 ms so the cut lands in a pause, not in one quiet frame inside a word.
        smooth = np.convolve(levels, np.ones(3) / 3.0, mode="same")
        lo = max(1, count // 2)
        # The latest of equally quiet frames keeps the finalised part long (fewer cuts).
        k = count - 1 - int(np.argmin(smooth[lo:][::-1]))
        cut = utt.frame_starts[k]
        closed = Utterance(
            utt.segment_id,
            utt.start,
            cut,
            np.concatenate(utt.frames[:k]),
            "max_length",
            utt.speech_end_wall,
            np.asarray(utt.frame_starts[:k], np.int64) - utt.start,
            np.asarray(utt.probabilities[:k], np.float32),
        )
        self.committed_until = cut
        rest = _Open(
            self._next_id,
            cut,
            utt.frames[k:],
            utt.frame_starts[k:],
            utt.levels_db[k:],
            utt.probabilities[k:],
            speech_samples=utt.speech_samples,
            silence_samples=utt.silence_samples,
            last_speech_end=max(utt.last_speech_end, cut),
            confirmed=True,
            speech_end_wall=wall,
        )
        self._next_id += 1
        self._open = rest
        return [closed, Started(rest.segment_id, rest.start)]

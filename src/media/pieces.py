"""Audio cut into pieces as it is decoded: the cuts `vad.split_at_quiet_points` makes on a whole array, made on a
stream of blocks while holding about one window of samples.

`split_at_quiet_points` cuts each window of `max_seconds` at the quietest 10 ms frame in the window's last 20%,
frames scored by their energy smoothed over 50 ms (`np.convolve(energy, ones(5) / 5, mode="same")`). A frame's
smoothed energy needs the two frames on each side of it, so a cut is decided once the samples reach two frames past
the window's end (or the stream ends: the last frames are smoothed as the whole array's last frames are). Energies
are computed per 10 ms frame on the same grid, with the same arithmetic, so the cuts are the same to the sample
for any block sizes: a resumed job cuts a file again at the same points.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from asr_server.media import SAMPLE_RATE

__all__ = ["AudioPiece", "iter_pieces"]

_SMOOTHING = np.ones(5) / 5.0  # as split_at_quiet_points: 5 frames of 10 ms
_REACH = 2  # frames on each side of a smoothed frame


@dataclass(frozen=True, eq=False)
class AudioPiece:
    """Consecutive samples of a stream: `samples` is its own array (it pins no larger buffer)."""

    index: int
    start_sample: int
    samples: np.ndarray  # float32, mono
    sample_rate: int = SAMPLE_RATE

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.samples)

    @property
    def start(self) -> float:
        """Seconds from the stream's start."""
        return self.start_sample / self.sample_rate

    @property
    def end(self) -> float:
        return self.end_sample / self.sample_rate


def iter_pieces(
    blocks: Iterable[np.ndarray], max_seconds: float, sample_rate: int = SAMPLE_RATE
) -> Iterator[AudioPiece]:
    """Consecutive pieces of at most `max_seconds` of mono `blocks`, covering every sample with no gap or
    overlap, cut where `split_at_quiet_points` cuts the blocks joined. Holds one window of samples, a few
    frames past it, and the block being read. Raises ValueError as `split_at_quiet_points` does."""
    if not max_seconds > 0 or sample_rate <= 0:
        raise ValueError("max_seconds and sample_rate must be positive")
    window = int(max_seconds * sample_rate)
    if window < 1:
        raise ValueError("max_seconds is shorter than one sample")
    return _Cutter(iter(blocks), window, sample_rate).pieces()


class _Cutter:
    def __init__(self, blocks: Iterator[np.ndarray], window: int, sample_rate: int) -> None:
        self._source = blocks
        self._window = window
        self._rate = sample_rate
        self._hop = max(1, sample_rate // 100)  # 10 ms energy frames
        # Samples [_base, _base + _filled) of the stream; the block being read is _block[_offset:].
        self._buffer = np.empty(window + 6 * self._hop + 1, dtype=np.float32)
        self._base = 0
        self._filled = 0
        self._block: np.ndarray | None = None
        self._offset = 0
        self._ended = False
        # Mean square of frames [_energy_base, _energy_base + len(_energy)): every whole frame buffered so far.
        self._energy = np.zeros(0, dtype=np.float64)
        self._energy_base = 0

    @property
    def _end(self) -> int:
        return self._base + self._filled

    def pieces(self) -> Iterator[AudioPiece]:
        window, hop = self._window, self._hop
        start = index = 0
        while True:
            self._fill(start + window + 1)
            if self._end - start <= window:  # the stream ended within this window: the last piece
                if self._end > start:
                    yield self._piece(index, start, self._end)
                return
            lo = (start + int(window * 0.8)) // hop + 1
            hi = (start + window) // hop  # frames ending at or before the window end
            if hi > lo:
                frame = self._quietest(lo, hi)
                cut = frame * hop + hop // 2
            else:
                self._measure()
                cut = start + window
            cut = min(max(cut, start + 1), start + window)
            yield self._piece(index, start, cut)
            index += 1
            start = cut
            self._forget(start)

    def _quietest(self, lo: int, hi: int) -> int:
        """The latest of the quietest frames in [lo, hi), with split_at_quiet_points' smoothing."""
        hop = self._hop
        # Smooth frames [a, b): interior frames get whole 5-frame sums, as in the whole array; an edge of the
        # slice is only an edge of a smoothed frame where it is the stream's (frame 0, or the last whole frame).
        # At least 5 frames (np.convolve swaps a shorter array with the kernel), unless that is the whole stream.
        wanted = max(hi + _REACH, max(0, lo - _REACH) + len(_SMOOTHING))
        self._fill(wanted * hop)
        self._measure()
        b = wanted if not self._ended else min(wanted, self._end // hop)
        a = max(0, min(lo - _REACH, b - len(_SMOOTHING)))
        first = self._energy_base
        smoothed = np.convolve(self._energy[a - first : b - first], _SMOOTHING, mode="same")
        quiet = smoothed[lo - a : hi - a]
        # argmin of the reversed slice: the latest of equally quiet frames keeps chunks long.
        return hi - 1 - int(np.argmin(quiet[::-1]))

    def _fill(self, until: int) -> None:
        """Buffer samples up to stream position `until`, or to the stream's end."""
        while self._end < until:
            if self._block is None or self._offset >= len(self._block):
                if self._ended:
                    return
                self._block = self._next_block()
                self._offset = 0
                if self._block is None:
                    self._ended = True
                    return
                continue
            take = min(len(self._block) - self._offset, until - self._end)
            room = len(self._buffer) - self._filled
            if room < take:  # only when the window's reach passed the estimate: grow
                grown = np.empty(self._filled + take, dtype=np.float32)
                grown[: self._filled] = self._buffer[: self._filled]
                self._buffer = grown
            self._buffer[self._filled : self._filled + take] = self._block[self._offset : self._offset + take]
            self._filled += take
            self._offset += take
        if self._block is not None and self._offset >= len(self._block):
            self._block = None  # do not pin a consumed block

    def _next_block(self) -> np.ndarray | None:
        for block in self._source:
            block = np.asarray(block, dtype=np.float32)
            if block.ndim != 1:
                raise ValueError(f"expected mono blocks, got shape {block.shape}")
            if block.size:
                return block
        return None

    def _measure(self) -> None:
        """The energy of every whole frame buffered and not yet measured (as split_at_quiet_points computes it)."""
        hop = self._hop
        first = self._energy_base + len(self._energy)
        last = self._end // hop
        if last <= first:
            return
        frames = self._buffer[first * hop - self._base : last * hop - self._base].reshape(last - first, hop)
        energy = np.einsum("ij,ij->i", frames, frames).astype(np.float64) / hop
        self._energy = np.concatenate((self._energy, energy))

    def _forget(self, start: int) -> None:
        """Drop samples before `start` (keeping a frame not yet measured) and energies no window needs again."""
        hop = self._hop
        measured = self._energy_base + len(self._energy)
        keep_from = min(start, measured * hop)
        drop = keep_from - self._base
        if drop > 0:
            remaining = self._filled - drop
            self._buffer[:remaining] = self._buffer[drop : self._filled]
            self._base, self._filled = keep_from, remaining
        # The next window smooths from frame lo - 2 >= start // hop - 1, or b - 5 >= start // hop - 3.
        needed = max(0, start // hop - 2 * _REACH)
        if needed > self._energy_base:
            self._energy = self._energy[needed - self._energy_base :].copy()
            self._energy_base = needed

    def _piece(self, index: int, start: int, end: int) -> AudioPiece:
        samples = self._buffer[start - self._base : end - self._base].copy()
        return AudioPiece(index=index, start_sample=start, samples=samples, sample_rate=self._rate)

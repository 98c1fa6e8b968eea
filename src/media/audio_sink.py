"""Where decoded blocks go: downmixed blocks at the source rate in, 16 kHz mono float32 out, within limits.

The decoder in `asr_server.media.audio` feeds one block at a time; soxr's streaming resampler (`MonoResampler`)
converts it, and the output is refused (413) the moment it passes the accepted length, so memory never exceeds what
a request may cost. Decoding whole gathers the 16 kHz blocks in a `SampleBuffer`; a stream hands them on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from asr_server.errors import AudioDecodeError, PayloadTooLarge
from asr_server.media import SAMPLE_RATE

# Blocks of at most this many source frames (and at most one second): 32 channels x 64 Ki x 4 B = 8 MiB.
MAX_BLOCK_FRAMES = 1 << 16
# A SampleBuffer's block list is joined once at the end; preallocate when the length is known to avoid that copy.
_PREALLOCATE_SLACK_S = 1.0


@dataclass(frozen=True)
class DecodeLimits:
    """Formats refused before decoding: each channel and each kHz multiplies the work per second of audio."""

    max_channels: int = 32
    """7.1.4 immersive mixes have 12 channels and 3rd-order ambisonics 16; 32 leaves room and caps the work."""
    max_sample_rate: int = 384_000
    """The highest rate studio formats use (DXD 352.8 kHz, 384 kHz); speech needs 16 kHz."""
    min_sample_rate: int = 1_000
    """Below 1 kHz no speech band survives, and upsampling 16x or more turns a small file into a large one."""

    def check(self, channels: int, sample_rate: int) -> None:
        if channels < 1 or channels > self.max_channels:
            raise AudioDecodeError(
                f"the audio has {channels} channels; this server accepts 1 to {self.max_channels}",
                param="file",
                code="unsupported_channels",
            )
        if not self.min_sample_rate <= sample_rate <= self.max_sample_rate:
            raise AudioDecodeError(
                f"the audio's sample rate is {sample_rate} Hz; this server accepts "
                f"{self.min_sample_rate} to {self.max_sample_rate} Hz",
                param="file",
                code="unsupported_sample_rate",
            )

    @staticmethod
    def block_frames(sample_rate: int) -> int:
        return max(1, min(MAX_BLOCK_FRAMES, sample_rate))


def too_long(max_seconds: float | None) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the audio is longer than the {max_seconds:g} s this server accepts (MAX_AUDIO_SECONDS)",
        param="file",
        code="audio_too_long",
    )


class MonoResampler:
    """Downmixed blocks at any source rate in, 16 kHz float32 blocks out, refusing output beyond `max_seconds`.

    soxr's streaming resampler converts block by block (the rate may change between blocks); every block it
    returns is checked (length, NaN/inf) and is the caller's own (never a view of a decoder's reused buffer).
    """

    def __init__(self, max_seconds: float | None) -> None:
        self._max_seconds = max_seconds
        self._max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
        self._resampler: Any = None
        self._rate = 0
        self.samples = 0
        """16 kHz samples given out so far."""

    def add(self, mono: np.ndarray, sample_rate: int) -> list[np.ndarray]:
        """One block of mono samples at `sample_rate`; the 16 kHz blocks it completes (often one, maybe none)."""
        out: list[np.ndarray] = []
        if sample_rate != self._rate:
            self._flush(out)
            self._rate = sample_rate
            self._resampler = None if sample_rate == SAMPLE_RATE else _stream_resampler(sample_rate)
        if self._resampler is None:
            self._accept(np.asarray(mono, dtype=np.float32), out)
        else:
            self._accept(self._resampler.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32)), out)
        return out

    def finish(self) -> list[np.ndarray]:
        """The resampler's last samples, at the end of the stream."""
        out: list[np.ndarray] = []
        self._flush(out)
        return out

    def _flush(self, out: list[np.ndarray]) -> None:
        if self._resampler is not None:
            self._accept(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True), out)
            self._resampler = None

    def _accept(self, block: np.ndarray, out: list[np.ndarray]) -> None:
        if block.size == 0:
            return
        if self._max_samples is not None and self.samples + block.size > self._max_samples:
            self._resampler = None
            raise too_long(self._max_seconds)
        if not np.isfinite(block).all():
            self._resampler = None
            raise AudioDecodeError("the audio contains invalid (NaN/inf) samples", param="file")
        out.append(block.copy() if block.base is not None else block)
        self.samples += block.size


class SampleBuffer:
    """16 kHz blocks gathered into one array (decoding whole).

    With `expected_seconds` (the header's length) the output goes into one buffer allocated up front, whose
    untouched pages cost nothing; without it, blocks are joined at the end (twice the output, briefly).
    """

    def __init__(self, max_seconds: float | None, expected_seconds: float | None = None) -> None:
        self._chunks: list[np.ndarray] = []
        self._buffer: np.ndarray | None = None
        self._size = 0
        if expected_seconds is not None:
            capacity = int((expected_seconds + _PREALLOCATE_SLACK_S) * SAMPLE_RATE)
            if max_seconds is not None:
                capacity = min(capacity, int(max_seconds * SAMPLE_RATE))
            self._buffer = np.empty(max(capacity, 1), dtype=np.float32)

    @property
    def samples(self) -> int:
        return self._size

    def append(self, block: np.ndarray) -> None:
        """A block the caller owns (it is kept, not copied, when it does not fit the buffer)."""
        if self._buffer is not None and not self._chunks and self._size + block.size <= len(self._buffer):
            self._buffer[self._size : self._size + block.size] = block
        else:
            self._chunks.append(block)
        self._size += block.size

    def finish(self) -> np.ndarray:
        if self._buffer is not None and not self._chunks:
            used = self._buffer[: self._size]
            # A header that overstated the length leaves a large tail; keep only what was decoded.
            return used if self._size >= 0.9 * len(self._buffer) else used.copy()
        pieces = ([self._buffer[: self._size]] if self._buffer is not None else []) + self._chunks
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def discard(self) -> None:
        """Drop the output before raising: a traceback keeps the buffer alive until its frames are collected."""
        self._chunks.clear()
        self._buffer = None


def _stream_resampler(source_rate: int) -> Any:
    import soxr

    return soxr.ResampleStream(source_rate, SAMPLE_RATE, 1, dtype="float32")


def release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc's malloc_trim); a no-op on other C libraries."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None

"""Whole or progressive: audio up to a length is decoded whole; a longer file stays an open stream.

Every feature takes whole audio (a `DecodedAudio`); a file of hours would cost 230 MB of samples an hour, so past
`whole_seconds` the decoder's blocks are not gathered: the caller gets a `LongAudio` that replays the blocks read
so far and then reads on, for the piece-by-piece path. Memory is bounded by `whole_seconds` either way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from asr_server.media import SAMPLE_RATE
from asr_server.media.audio import AudioStream, DecodedAudio, DecodeLimits, open_audio_stream
from asr_server.media.audio_sink import release_free_memory


class LongAudio:
    """An open decoder past its first `whole_seconds`: `blocks()` yields every block from the start, once."""

    def __init__(self, stream: AudioStream, head: list[np.ndarray]) -> None:
        self._stream = stream
        self._head = deque(head)

    @property
    def declared_duration(self) -> float | None:
        return self._stream.declared_duration

    @property
    def decoded_seconds(self) -> float:
        return self._stream.decoded_seconds

    @property
    def warning(self) -> str | None:
        """Known once every block was read (a truncated or damaged file), as for `DecodedAudio`."""
        return self._stream.warning

    def blocks(self) -> Iterator[np.ndarray]:
        while self._head:
            yield self._head.popleft()
        yield from self._stream

    def close(self) -> None:
        self._head.clear()
        self._stream.__exit__(None, None, None)
        release_free_memory()


def open_audio(
    source: bytes | BinaryIO | Path,
    filename: str | None = None,
    *,
    max_seconds: float | None,
    whole_seconds: float,
    limits: DecodeLimits | None = None,
) -> DecodedAudio | LongAudio:
    """`DecodedAudio` when the file holds at most `whole_seconds`, else a `LongAudio` (close it when done).
    Raises what `decode_audio` raises (4xx `ServiceError`s)."""
    stream = open_audio_stream(source, filename, max_seconds=max_seconds, limits=limits)
    stream.__enter__()
    head: list[np.ndarray] = []
    gathered = 0
    limit = int(whole_seconds * SAMPLE_RATE)
    try:
        for block in stream:
            head.append(block)
            gathered += len(block)
            if gathered > limit:
                return LongAudio(stream, head)
    except BaseException:
        stream.__exit__(None, None, None)
        raise
    stream.__exit__(None, None, None)
    samples = np.concatenate(head) if head else np.zeros(0, dtype=np.float32)
    head.clear()
    return stream.to_decoded(samples)

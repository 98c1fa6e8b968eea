"""Hostile and broken audio files, built offline with soundfile and PyAV (no ffmpeg binary needed).

Silence compresses to almost nothing, so a few hundred KB can declare twenty minutes of 8-channel 192 kHz audio:
the "bombs" a decoder must refuse from the header or cut off while decoding.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


class NonSeekableSink(io.RawIOBase):
    """A write-only stream that refuses to seek, as a pipe does: muxers cannot go back to fill in the length."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, chunk: bytes) -> int:  # type: ignore[override]
        self.data += chunk
        return len(chunk)


def sine(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silent_soundfile(seconds: float, rate: int, channels: int, fmt: str = "FLAC", subtype: str = "PCM_16") -> bytes:
    """Silence written block by block (a bomb: tiny file, long declared audio)."""
    buffer = io.BytesIO()
    block = np.zeros((min(rate * 10, int(seconds * rate)), channels), dtype=np.int16)
    remaining = int(seconds * rate)
    with sf.SoundFile(buffer, "w", rate, channels, format=fmt, subtype=subtype) as sound:
        while remaining > 0:
            sound.write(block[: min(len(block), remaining)])
            remaining -= len(block)
    return buffer.getvalue()


def pyav_encode(
    seconds: float,
    rate: int,
    *,
    container: str,
    codec: str,
    channels: int = 1,
    silent: bool = False,
    seekable: bool = True,
) -> bytes:
    """Encode a sine (or silence) with PyAV; `seekable=False` writes to a pipe-like stream (no length in the header)."""
    import av

    sink: io.IOBase = io.BytesIO() if seekable else NonSeekableSink()
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    with av.open(sink, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout=layout)
        sample_format = stream.codec_context.format.name
        frame_size = stream.codec_context.frame_size or 4096
        total = int(seconds * rate)
        signal = np.zeros(min(total, frame_size), np.float32) if silent else None
        for start in range(0, total, frame_size):
            n = min(frame_size, total - start)
            if signal is not None:
                mono = signal[:n]
            else:
                mono = (0.3 * np.sin(2 * np.pi * 440.0 * np.arange(start, start + n) / rate)).astype(np.float32)
            samples = _as_format(mono, channels, sample_format)
            frame = av.AudioFrame.from_ndarray(samples, format=sample_format, layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return bytes(sink.getvalue() if isinstance(sink, io.BytesIO) else sink.data)


def _as_format(mono: np.ndarray, channels: int, sample_format: str) -> np.ndarray:
    planar = sample_format.endswith("p")
    kind = sample_format.rstrip("p")
    dtype, scale = {"s16": (np.int16, 32767), "s32": (np.int32, 2**31 - 1), "flt": (np.float32, 1)}[kind]
    samples = (mono * scale).astype(dtype)
    if planar:
        return np.ascontiguousarray(np.repeat(samples[None, :], channels, axis=0))
    return np.ascontiguousarray(np.repeat(samples[:, None], channels, axis=1).reshape(1, -1))


def wav(seconds: float = 2.0, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, sine(seconds, rate), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def wav_header_only(channels: int, rate: int, bits: int = 8) -> bytes:
    """The 44-byte header of a PCM WAV declaring `channels` (and one frame of data), written by soundfile."""
    subtype = {8: "PCM_U8", 16: "PCM_16"}[bits]
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((1, channels), np.float32), rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def corrupt_middle(data: bytes, start: int, length: int, seed: int = 0) -> bytes:
    """`data` with `length` random bytes from `start` (damaged packets in the middle of a stream)."""
    rng = np.random.default_rng(seed)
    garbage = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    return data[:start] + garbage + data[start + length :]

"""Test helpers: audio made offline; the loopback server runner lives in `asr_server.testing`."""

from __future__ import annotations

import io
import threading

import numpy as np
import soundfile as sf

from asr_server.engines import TranscribeItem, Transcript
from asr_server.engines.fake import FakeEngine
from asr_server.testing import free_port, running_server

__all__ = ["GatedEngine", "encode", "free_port", "noise", "running_server", "speechlike", "tone", "wav_bytes"]


def tone(seconds: float, sample_rate: int = 16_000, freq: float = 220.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, sample_rate: int = 16_000, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)


def encode(samples: np.ndarray, sample_rate: int = 16_000, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    """Encode samples into a file's bytes (WAV, FLAC, OGG...) with soundfile."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav_bytes(seconds: float = 2.0, sample_rate: int = 16_000) -> bytes:
    return encode(tone(seconds, sample_rate), sample_rate)


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Voiced-like bursts (harmonics with syllable-rate modulation) separated by real pauses."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = [np.zeros(int(0.4 * 16_000), np.float32)]
    total = 0.4
    while total < seconds - 1.0:
        burst = rng.uniform(1.5, 4.0)
        t = np.arange(int(burst * 16_000)) / 16_000
        f0 = rng.uniform(110, 220)
        voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
        out.append((0.2 * voice * envelope).astype(np.float32))
        pause = rng.uniform(0.6, 1.0)
        out.append(np.zeros(int(pause * 16_000), np.float32))
        total += burst + pause
    audio = np.concatenate(out)[: int(seconds * 16_000)]
    return np.concatenate([audio, np.zeros(int(seconds * 16_000) - len(audio), np.float32)])


class GatedEngine(FakeEngine):
    """The fake engine, but every batch blocks until `gate` is set; records each item's context and length."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.contexts: list[str] = []
        self.seconds: list[float] = []

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        self.seconds.extend(item.audio.size / 16_000 for item in items)
        self.gate.wait(20)
        self.contexts.extend(item.context for item in items)
        return super().transcribe(items)

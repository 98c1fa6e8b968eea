"""The diarization contract: speaker turns out of 16 kHz mono float32 audio, and speaker embeddings of clips."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from asr_server.errors import EngineUnavailable


@dataclass(frozen=True)
class SpeakerTurn:
    """One stretch of speech by one speaker."""

    start: float  # seconds
    end: float
    speaker: str  # cluster label as produced by the backend, e.g. "SPEAKER_01"


@dataclass(frozen=True)
class Diarization:
    """A diarizer's full answer: the turns in time order and one L2-normalised embedding per cluster label
    (the centroid of the cluster's window embeddings), for naming clusters after reference clips."""

    turns: tuple[SpeakerTurn, ...] = ()
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def speakers(self) -> list[str]:
        """Cluster labels in order of first appearance."""
        return list(dict.fromkeys(turn.speaker for turn in self.turns))


class DiarizationUnavailable(EngineUnavailable):
    """Diarization was asked for but is not configured, its extra is not installed, or its model failed."""

    code = "diarization_unavailable"


class Diarizer(ABC):
    """Who spoke when. Implementations load their model lazily and are used from one thread at a time."""

    @abstractmethod
    def analyse(self, audio: np.ndarray, *, num_speakers: int | None = None) -> Diarization:
        """Turns and per-cluster embeddings of 16 kHz mono float32 audio; no speech gives an empty answer.
        `num_speakers` fixes the number of clusters when the caller knows it."""

    def diarize(self, audio: np.ndarray, *, num_speakers: int | None = None) -> list[SpeakerTurn]:
        """The turns of `analyse`, in time order."""
        return list(self.analyse(audio, num_speakers=num_speakers).turns)

    @abstractmethod
    def embed(self, audio: np.ndarray) -> np.ndarray:
        """One L2-normalised float32 speaker embedding of a clip (16 kHz mono float32)."""

    def embed_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """`embed` of each clip."""
        return [self.embed(clip) for clip in clips]

    @abstractmethod
    def describe(self) -> dict[str, object]:
        """Facts for logs and /ready: backend, version, device, whether the model is loaded."""

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load the model now; `analyse` and `embed` load it on first use anyway."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model (a call in flight finishes; the next call loads it again)."""

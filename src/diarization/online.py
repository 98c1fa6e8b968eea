"""Live-stream speaker labels: each utterance's embedding joins the nearest speaker or starts a new one."""

from __future__ import annotations

import numpy as np

from asr_server.diarization.assign import letter_label


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class OnlineSpeakerClusterer:
    """Labels "A", "B", ... that stay with the same voice for a whole stream.

    Each speaker keeps a running mean of its utterances' unit embeddings; an utterance goes to the speaker
    whose centroid is most similar when that cosine is at least `threshold`, else it starts a new speaker.
    Once `max_speakers` exist, every utterance goes to the most similar one. One instance per stream; not
    thread-safe.
    """

    def __init__(self, threshold: float, max_speakers: int = 26) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold is a cosine similarity, in [-1, 1]")
        if max_speakers < 1:
            raise ValueError("max_speakers must be >= 1")
        self.threshold = threshold
        self.max_speakers = max_speakers
        self._sums: list[np.ndarray] = []  # per speaker: the sum of its utterances' unit embeddings

    @property
    def speakers(self) -> list[str]:
        """Labels given so far, in order."""
        return [letter_label(i) for i in range(len(self._sums))]

    def centroid(self, label: str) -> np.ndarray:
        """The unit-length mean embedding of a speaker."""
        index = self.speakers.index(label)
        return _unit(self._sums[index]).astype(np.float32)

    def similarities(self, embedding: np.ndarray) -> list[float]:
        """Cosine of `embedding` with each speaker's centroid, in label order."""
        unit = _unit(embedding)
        return [float(np.dot(unit, _unit(total))) for total in self._sums]

    def assign(self, embedding: np.ndarray) -> str:
        """The label of the utterance whose speaker embedding this is; updates that speaker's centroid."""
        unit = _unit(embedding)
        if not np.any(unit):
            raise ValueError("an all-zero embedding has no direction")
        scores = self.similarities(unit)
        best = int(np.argmax(scores)) if scores else -1
        if best < 0 or (scores[best] < self.threshold and len(self._sums) < self.max_speakers):
            self._sums.append(unit.copy())
            return letter_label(len(self._sums) - 1)
        self._sums[best] = self._sums[best] + unit
        return letter_label(best)

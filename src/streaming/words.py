"""Word timings and speaker labels of a live stream's finals (no model here: what the session needs injected).

- Fast timing costs no model call: the utterance's text is spread over the speech its own VAD frames found
  (the probabilities the segmenter already saw), as uploads' `subtitle_mode=fast` does.
- Accurate timing is one forced-aligner job through the shared queue (`WordAligner`); the session runs it
  after the final is out, so the final never waits for it.
- Speakers come from one embedding per utterance (`SpeakerLabels`), clustered online per stream.
Every list of words a session reports is ordered, non-overlapping and inside its utterance's span.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from loguru import logger

from asr_server.errors import ServiceError
from asr_server.media import SAMPLE_RATE
from asr_server.streaming.segmenter import Utterance
from asr_server.subtitle import WordTiming, fast_timings

WordTimingMode = Literal["accurate", "fast", "none"]
# As `media.vad.speech_regions` for uploads: a region ends after this much quiet, and is padded by this much.
REGION_MIN_SILENCE_S = 0.3
REGION_PAD_S = 0.1


class WordAligner(Protocol):
    """The forced aligner, reached through the queue."""

    @property
    def available(self) -> bool: ...

    async def align(self, samples: np.ndarray, text: str, language: str | None, offset: float) -> list[WordTiming]:
        """Timed words of `text` in `samples` (times + `offset`); raises ServiceError when it fails."""
        ...


class SpeakerLabels(Protocol):
    """One stream's speakers: an embedding per utterance, and the label its cluster has for this stream."""

    async def embed(self, samples: np.ndarray) -> np.ndarray: ...

    def assign(self, embedding: np.ndarray) -> str: ...


def utterance_regions(utterance: Utterance, threshold: float) -> list[tuple[float, float]]:
    """Speech regions inside `utterance` (seconds from its start) from its frames' VAD probabilities, with the
    hysteresis of `media.vad.regions_from_probabilities` (start at `threshold`, end after quiet below
    `threshold - 0.15`)."""
    total = utterance.audio.size / SAMPLE_RATE
    offsets = utterance.frame_offsets
    if offsets.size == 0 or offsets.size != utterance.probabilities.size:
        return [(0.0, total)]
    ends = np.append(offsets[1:], utterance.audio.size) / SAMPLE_RATE
    starts = offsets / SAMPLE_RATE
    low = max(threshold - 0.15, 0.01)
    raw: list[tuple[float, float]] = []
    begin: float | None = None
    quiet_since: float | None = None
    for a, b, p in zip(starts.tolist(), ends.tolist(), utterance.probabilities.tolist(), strict=True):
        if p >= threshold:
            quiet_since = None
            begin = a if begin is None else begin
        elif begin is not None and p < low:
            quiet_since = a if quiet_since is None else quiet_since
            if b - quiet_since >= REGION_MIN_SILENCE_S:
                raw.append((begin, quiet_since))
                begin = quiet_since = None
    if begin is not None:
        raw.append((begin, quiet_since if quiet_since is not None else total))
    regions: list[tuple[float, float]] = []
    for a, b in raw:
        a, b = max(0.0, a - REGION_PAD_S), min(total, b + REGION_PAD_S)
        if regions and a <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(b, regions[-1][1]))
        else:
            regions.append((a, b))
    return regions or [(0.0, total)]


def fast_words(utterance: Utterance, text: str, threshold: float) -> list[WordTiming]:
    """`text` spread over the utterance's speech, on the stream's clock."""
    offset = utterance.start / SAMPLE_RATE
    duration = utterance.audio.size / SAMPLE_RATE
    words = fast_timings(text, utterance_regions(utterance, threshold), offset=offset, duration=duration)
    return tidy(words, offset, offset + duration)


def tidy(words: list[WordTiming], start: float, end: float) -> list[WordTiming]:
    """`words` clamped into `[start, end]`, each starting no earlier than the previous one ended."""
    out: list[WordTiming] = []
    cursor = start
    for word in words:
        first = min(max(word.start, cursor), end)
        last = min(max(word.end, first), end)
        out.append(WordTiming(word.text, first, last))
        cursor = last
    return out


@dataclass(frozen=True)
class PendingWords:
    """A final whose words the aligner is still to time."""

    utterance: Utterance
    text: str
    language: str | None
    fast: tuple[WordTiming, ...]


async def aligned_words(aligner: WordAligner, pending: PendingWords) -> tuple[tuple[WordTiming, ...], str]:
    """The aligner's words of a final and "accurate", or its fast words and "fast" when the aligner fails."""
    utterance = pending.utterance
    offset, end = utterance.start / SAMPLE_RATE, utterance.end / SAMPLE_RATE
    try:
        words = await aligner.align(utterance.audio, pending.text, pending.language, offset)
    except ServiceError as exc:
        logger.warning("the aligner failed on a stream's utterance ({}); its words keep fast timing", exc.message)
        return pending.fast, "fast"
    except Exception:
        logger.exception("aligning a stream's utterance failed; its words keep fast timing")
        return pending.fast, "fast"
    return tuple(tidy(words, offset, end)), "accurate"


async def speaker_of(speakers: SpeakerLabels, embedding: asyncio.Future[np.ndarray], text: str) -> str | None:
    """The label of an utterance's voice once its embedding is ready; None for an utterance without text
    (noise must not become a speaker) or when the embedding failed."""
    if not text:
        embedding.cancel()
        return None
    try:
        return speakers.assign(await embedding)
    except Exception as exc:  # a clip too short or a model that failed: the final goes out without a speaker
        logger.warning("no speaker for a stream's utterance: {}", exc)
        return None

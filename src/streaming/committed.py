"""Transcribing a buffer the client committed itself (Realtime `turn_detection: null`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from asr_server.media import SAMPLE_RATE
from asr_server.media.vad import VAD, speech_regions, split_at_quiet_points
from asr_server.streaming.metrics import StreamMetrics
from asr_server.streaming.session import TranscribeFn
from asr_server.streaming.words import SpeakerLabels, speaker_of, tidy
from asr_server.subtitle import WordTiming, fast_timings
from asr_server.text.units import join_pieces


@dataclass(frozen=True)
class CommittedText:
    text: str
    language: str | None
    words: tuple[WordTiming, ...] = ()  # fast timing, seconds from the start of the committed buffer
    speaker: str | None = None


def _piece_words(text: str, regions: list[tuple[float, float]], start: float, end: float) -> list[WordTiming]:
    """`text` spread over the speech `regions` (buffer seconds) that fall inside the piece `[start, end)`."""
    inside = [(max(a, start) - start, min(b, end) - start) for a, b in regions if min(b, end) > max(a, start)]
    return tidy(fast_timings(text, inside, offset=start, duration=end - start), start, end)


async def transcribe_committed(
    audio: np.ndarray,
    transcribe: TranscribeFn,
    vad: VAD,
    *,
    language: str | None,
    context: str,
    threshold: float,
    max_utterance_s: float,
    metrics: StreamMetrics,
    speakers: SpeakerLabels | None = None,
) -> CommittedText:
    """Trim the silence around the speech (never sent to the model), split what is left at quiet
    points into pieces of at most `max_utterance_s`, and transcribe the pieces in order; with `speakers`,
    the trimmed speech's voice is embedded meanwhile."""
    metrics.audio_seconds += audio.size / SAMPLE_RATE
    regions = await asyncio.to_thread(speech_regions, audio, SAMPLE_RATE, threshold=threshold, vad=vad)
    if not regions:
        return CommittedText("", None)
    first = int(regions[0][0] * SAMPLE_RATE)
    span = audio[first : int(regions[-1][1] * SAMPLE_RATE)]
    embedding = asyncio.ensure_future(speakers.embed(span)) if speakers is not None else None
    texts: list[str] = []
    words: list[WordTiming] = []
    language_found: str | None = None
    try:
        for start, end in split_at_quiet_points(span, SAMPLE_RATE, max_utterance_s):
            metrics.final_decoded_seconds += (end - start) / SAMPLE_RATE
            text, language_found = await transcribe(span[start:end], language, context)
            if text.strip():
                texts.append(text)
                begin, finish = (first + start) / SAMPLE_RATE, (first + end) / SAMPLE_RATE
                words += _piece_words(text, regions, begin, finish)
    except BaseException:
        if embedding is not None:
            embedding.cancel()
        raise
    joined = join_pieces(texts)  # as every other join of pieces: no space between CJK pieces
    speaker = None if speakers is None or embedding is None else await speaker_of(speakers, embedding, joined)
    return CommittedText(joined, language_found, tuple(words), speaker)

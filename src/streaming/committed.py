"""Transcribing a buffer the client committed itself (Realtime `turn_detection: null`)."""

from __future__ import annotations

import asyncio

import numpy as np

from asr_server.media import SAMPLE_RATE
from asr_server.media.vad import VAD, speech_regions, split_at_quiet_points
from asr_server.streaming.metrics import StreamMetrics
from asr_server.streaming.session import TranscribeFn
from asr_server.text.units import join_pieces


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
) -> tuple[str, str | None]:
    """Trim the silence around the speech (never sent to the model), split what is left at quiet
    points into pieces of at most `max_utterance_s`, and transcribe the pieces in order."""
    metrics.audio_seconds += audio.size / SAMPLE_RATE
    regions = await asyncio.to_thread(speech_regions, audio, SAMPLE_RATE, threshold=threshold, vad=vad)
    if not regions:
        return "", None
    span = audio[int(regions[0][0] * SAMPLE_RATE) : int(regions[-1][1] * SAMPLE_RATE)]
    texts: list[str] = []
    language_found: str | None = None
    for start, end in split_at_quiet_points(span, SAMPLE_RATE, max_utterance_s):
        metrics.final_decoded_seconds += (end - start) / SAMPLE_RATE
        text, language_found = await transcribe(span[start:end], language, context)
        if text:
            texts.append(text)
    return join_pieces(texts), language_found  # as every other join of pieces: no space between CJK pieces

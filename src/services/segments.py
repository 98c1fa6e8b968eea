"""verbose_json `segments` with every field of OpenAI's `TranscriptionSegment`, filled with measured values.

- `tokens` / `avg_logprob`: the engine's text tokens (see `Transcript`). A segment is a subtitle cue, and
  cues are cut from the words of one or more chunk transcripts, so tokens are given to segments by
  position in the text: each token goes to the segment that holds the middle of its characters
  (whitespace ignored; a token with no visible character of its own, such as a lone space or the first
  byte of a split character, goes with the character after it). Tokens stay in order and each goes to
  exactly one segment, so the segments' tokens concatenated are the engine's tokens. `avg_logprob` is
  the mean log-probability of the segment's tokens; 0.0 when the engine reported none for them.
- `compression_ratio`: Whisper's: UTF-8 length of the segment text over its zlib-compressed length.
- `no_speech_prob`: 1 − the mean speech probability the VAD gives the 32 ms frames of the segment's span.
- `seek`: where the segment starts, in centiseconds (`int(start * 100)`), as other Whisper-compatible
  servers send it; `temperature`: the request's.
"""

from __future__ import annotations

import bisect
import codecs
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asr_server.engines import Transcript
from asr_server.media import SAMPLE_RATE
from asr_server.media.vad import FRAME_SAMPLES
from asr_server.subtitle import segments_from_cues
from asr_server.text.cues import Cue

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE


@dataclass(frozen=True)
class SpeechFrames:
    """VAD speech probabilities of consecutive 32 ms frames starting at `offset` seconds."""

    offset: float
    probabilities: np.ndarray


def _visible(text: str) -> int:
    return sum(1 for ch in text if not ch.isspace())


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def no_speech_probability(frames: Sequence[SpeechFrames], start: float, end: float) -> float:
    """1 − mean speech probability of the frames overlapping [start, end); 1.0 where no frame does."""
    picked: list[np.ndarray] = []
    for block in frames:
        first = max(0, math.floor((start - block.offset) / FRAME_SECONDS))
        last = min(len(block.probabilities), math.ceil((end - block.offset) / FRAME_SECONDS))
        if last > first:
            picked.append(block.probabilities[first:last])
    if not picked:
        return 1.0
    return float(1.0 - np.concatenate(picked).mean())


def _token_widths(transcript: Transcript) -> list[int]:
    """Visible characters each token completes (its bytes decoded in sequence); 1 each without bytes."""
    if len(transcript.token_bytes) != len(transcript.tokens):
        return [1] * len(transcript.tokens)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return [_visible(decoder.decode(piece)) for piece in transcript.token_bytes]


def attribute_tokens(segment_texts: Sequence[str], transcripts: Sequence[Transcript]) -> list[list[tuple[int, int]]]:
    """For each segment, its tokens as (transcript index, token index), in order (see the module doc)."""
    starts: list[int] = []
    position = 0
    for text in segment_texts:
        starts.append(position)
        position += _visible(text)
    out: list[list[tuple[int, int]]] = [[] for _ in segment_texts]
    if not out:
        return out
    offset = 0
    for t_index, transcript in enumerate(transcripts):
        text_width = _visible(transcript.text)
        widths = _token_widths(transcript)
        # A transcript's tokens may hold more characters than its text (qwen-asr collapses long repeats):
        # positions are scaled onto the text so the next transcript's tokens start where its text does.
        scale = text_width / sum(widths) if sum(widths) else 0.0
        done = 0
        for k, width in enumerate(widths):
            middle = done + width / 2 if width else done
            segment = bisect.bisect_right(starts, offset + middle * scale) - 1
            out[min(max(segment, 0), len(out) - 1)].append((t_index, k))
            done += width
        offset += text_width
    return out


def verbose_segments(
    cues: list[Cue], transcripts: Sequence[Transcript], frames: Sequence[SpeechFrames], temperature: float
) -> list[dict[str, object]]:
    """OpenAI `TranscriptionSegment`s for the cues of these transcripts (in audio order)."""
    base = segments_from_cues(cues)
    owned = attribute_tokens([segment["text"] for segment in base], transcripts)
    segments = []
    for segment, picks in zip(base, owned, strict=True):
        tokens = [transcripts[t].tokens[k] for t, k in picks]
        scores = [transcripts[t].logprobs[k] for t, k in picks if len(transcripts[t].logprobs) > k]
        start, end = segment["start"], segment["end"]
        segments.append(
            {
                "id": segment["id"],
                "seek": int(start * 100),
                "start": round(start, 3),
                "end": round(end, 3),
                "text": segment["text"],
                "tokens": tokens,
                "temperature": temperature,
                "avg_logprob": sum(scores) / len(scores) if scores else 0.0,
                "compression_ratio": compression_ratio(segment["text"]),
                "no_speech_prob": no_speech_probability(frames, start, end),
                **({"speaker": segment["speaker"]} if "speaker" in segment else {}),
            }
        )
    return segments


def token_logprobs(transcripts: Sequence[Transcript]) -> list[dict[str, object]]:
    """OpenAI's `logprobs` ({"token", "logprob", "bytes"} per token) for `include[]=logprobs`."""
    out: list[dict[str, object]] = []
    for transcript in transcripts:
        if len(transcript.logprobs) != len(transcript.tokens):
            continue
        pieces = (
            transcript.token_bytes
            if len(transcript.token_bytes) == len(transcript.tokens)
            else [b""] * len(transcript.tokens)
        )
        for piece, logprob in zip(pieces, transcript.logprobs, strict=True):
            out.append({"token": piece.decode(errors="replace"), "logprob": logprob, "bytes": list(piece)})
    return out

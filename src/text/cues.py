"""Subtitle cues and their SRT/WebVTT text forms.

Serialisation is written here (it is a few lines and must round timestamps exactly); parsing of
user-supplied files goes through the maintained `srt` and `webvtt-py` packages.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass


@dataclass(frozen=True)
class Cue:
    """One subtitle cue. `text` may hold line breaks ("\\n"); times are seconds from the start."""

    index: int
    start: float
    end: float
    text: str


class SubtitleParseError(ValueError):
    """A subtitle file the user sent could not be parsed."""


def _split_ms(seconds: float) -> tuple[int, int, int, int]:
    # Round once to whole milliseconds so ",1000" can never appear.
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return hours, minutes, secs, millis


def srt_timestamp(seconds: float) -> str:
    h, m, s, ms = _split_ms(seconds)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def vtt_timestamp(seconds: float) -> str:
    h, m, s, ms = _split_ms(seconds)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def to_srt(cues: list[Cue]) -> str:
    blocks = [f"{cue.index}\n{srt_timestamp(cue.start)} --> {srt_timestamp(cue.end)}\n{cue.text}\n" for cue in cues]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # WebVTT cue text is markup: &, < and > must be escaped, and "-->" may not appear.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(cues: list[Cue]) -> str:
    blocks = [f"{vtt_timestamp(cue.start)} --> {vtt_timestamp(cue.end)}\n{_vtt_escape(cue.text)}\n" for cue in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)


def parse_srt(text: str) -> list[Cue]:
    import srt

    try:
        parsed = list(srt.parse(text))
    except (srt.SRTParseError, ValueError) as exc:
        raise SubtitleParseError(f"not a valid SRT file: {exc}") from exc
    return [
        Cue(index=sub.index, start=sub.start.total_seconds(), end=sub.end.total_seconds(), text=sub.content)
        for sub in parsed
    ]


def parse_vtt(text: str) -> list[Cue]:
    import webvtt

    try:
        captions = webvtt.from_buffer(io.StringIO(text)).captions
    except Exception as exc:  # webvtt-py raises several unrelated types for bad input
        raise SubtitleParseError(f"not a valid WebVTT file: {exc}") from exc
    return [
        Cue(
            index=number,
            start=cap.start_time.in_milliseconds() / 1000,
            end=cap.end_time.in_milliseconds() / 1000,
            text=html.unescape(cap.text),
        )
        for number, cap in enumerate(captions, start=1)
    ]

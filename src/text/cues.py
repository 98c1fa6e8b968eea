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
    speaker: str | None = None  # with diarization: a cue holds one speaker's words


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


def _srt_text(cue: Cue, previous: Cue | None) -> str:
    # SRT has no speaker markup; the usual convention labels a cue where the speaker changes: "[A] ...".
    if cue.speaker is None or (previous is not None and previous.speaker == cue.speaker):
        return cue.text
    return f"[{cue.speaker}] {cue.text}"


def to_srt(cues: list[Cue]) -> str:
    blocks = [
        f"{cue.index}\n{srt_timestamp(cue.start)} --> {srt_timestamp(cue.end)}\n{_srt_text(cue, previous)}\n"
        for cue, previous in zip(cues, [None, *cues][: len(cues)], strict=True)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # WebVTT cue text is markup: &, < and > must be escaped, and "-->" may not appear.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt_text(cue: Cue) -> str:
    text = _vtt_escape(cue.text)
    if cue.speaker is None:
        return text
    # A voice span per line: each line of a cue is its own span in WebVTT's grammar.
    return "\n".join(f"<v {_vtt_escape(cue.speaker)}>{line}</v>" for line in text.split("\n"))


def to_vtt(cues: list[Cue]) -> str:
    blocks = [f"{vtt_timestamp(cue.start)} --> {vtt_timestamp(cue.end)}\n{_vtt_text(cue)}\n" for cue in cues]
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

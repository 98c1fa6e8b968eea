"""SRT/WebVTT serialisation round-trips through the independent parsers."""

from __future__ import annotations

import html
import io

import srt
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_server.text.cues import Cue, parse_srt, parse_vtt, srt_timestamp, to_srt, to_vtt, vtt_timestamp

line = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\r\n"), min_size=1
).filter(lambda s: s.strip() == s and s)


@st.composite
def cue_lists(draw: st.DrawFn) -> list[Cue]:
    count = draw(st.integers(1, 6))
    t = draw(st.floats(0, 4000, allow_subnormal=False))
    cues = []
    for index in range(1, count + 1):
        length = draw(st.floats(0.01, 10, allow_subnormal=False))
        text = "\n".join(draw(st.lists(line, min_size=1, max_size=2)))
        cues.append(Cue(index=index, start=round(t, 3), end=round(t + length, 3), text=text))
        t += length + 0.1
    return cues


def test_timestamps_round_and_never_show_1000_ms() -> None:
    assert srt_timestamp(0.9996) == "00:00:01,000"
    assert srt_timestamp(3599.9999) == "01:00:00,000"
    assert vtt_timestamp(3723.004) == "01:02:03.004"
    assert srt_timestamp(36000.5) == "10:00:00,500"


@settings(max_examples=150, deadline=None)
@given(cue_lists())
def test_srt_round_trip_with_the_srt_package(cues: list[Cue]) -> None:
    text = to_srt(cues)
    parsed = list(srt.parse(text))
    assert [p.index for p in parsed] == [c.index for c in cues]
    assert [round(p.start.total_seconds(), 3) for p in parsed] == [c.start for c in cues]
    assert parse_srt(text) == cues


@settings(max_examples=150, deadline=None)
@given(cue_lists())
def test_vtt_round_trip_with_webvtt_py(cues: list[Cue]) -> None:
    text = to_vtt(cues)
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    assert len(captions) == len(cues)
    assert [c.end_time.in_milliseconds() / 1000 for c in captions] == [c.end for c in cues]
    assert [(c.start, c.end, c.text) for c in parse_vtt(text)] == [(c.start, c.end, c.text) for c in cues]


def test_vtt_escapes_markup() -> None:
    cues = [Cue(1, 0.0, 1.0, "a < b > c & d --> e")]
    assert parse_vtt(to_vtt(cues))[0].text == "a < b > c & d --> e"


def test_speakers_are_marked_where_they_change() -> None:
    cues = [Cue(1, 0.0, 1.0, "Hello there.", "A"), Cue(2, 1.2, 2.0, "How are you?", "A"),
            Cue(3, 2.5, 3.5, "Fine,\nthanks & you?", "B"), Cue(4, 4.0, 5.0, "Good.", "A")]  # fmt: skip
    parsed = list(srt.parse(to_srt(cues)))
    assert [c.content for c in parsed] == ["[A] Hello there.", "How are you?", "[B] Fine,\nthanks & you?", "[A] Good."]
    captions = webvtt.from_buffer(io.StringIO(to_vtt(cues)))
    assert [c.voice for c in captions] == ["A", "A", "B", "A"]
    assert html.unescape(captions[2].text) == "Fine,\nthanks & you?"
    assert to_srt([]) == "" and to_vtt([]) == "WEBVTT\n\n"

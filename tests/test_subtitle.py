"""Cue building, punctuation restoration and fallback timings (asr_server.subtitle)."""

from __future__ import annotations

import io
import itertools
import re

import pytest
import srt
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_server.subtitle import (
    CueRules,
    WordTiming,
    build_cues,
    fast_timings,
    join_words,
    restore_punctuation,
    segments_from_cues,
    words_payload,
)
from asr_server.text.cues import Cue, to_srt, to_vtt
from asr_server.text.line_breaking import can_break_between, display_width
from asr_server.text.units import match_key, normalise_space, unit_spans

EN = re.findall(r"\w+", "the quick brown fox jumps over a lazy dog and then it runs away because nobody was watching")
ZH = list("我们今天天气很好去公园散步然后吃饭觉得这是一个非常的主意")
JA = list("こんにちはとても良い天気ですね散歩に行きましょうか")
CLOSING = [",", ".", "?", "!", ";", "，", "。", "？", "！", "、", "…", '"']


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _words(spec: list[tuple[str, float, float]]) -> list[WordTiming]:
    return [WordTiming(t, s, e) for t, s, e in spec]


def _timed(texts: list[str], step: float = 0.4, length: float = 0.3, start: float = 0.0) -> list[WordTiming]:
    return [WordTiming(t, start + k * step, start + k * step + length) for k, t in enumerate(texts)]


def _latin(text: str) -> list[WordTiming]:
    return _timed([(" " if k else "") + w for k, w in enumerate(text.split())])


# --- CueRules ---


def test_rules_defaults_and_validation() -> None:
    rules = CueRules()
    assert (rules.max_lines, rules.max_line_width, rules.max_duration) == (2, 42, 7.0)
    assert rules.min_duration == pytest.approx(0.8333, abs=1e-3) and rules.min_gap == pytest.approx(0.083)
    bad = [("max_lines", 0), ("max_line_width", 1), ("min_duration", 8.0), ("max_duration", 0)]
    bad += [("min_gap", -0.1), ("pause_split", 0), ("max_cps", 0), ("max_cps_cjk", float("nan"))]
    for field, value in bad:
        with pytest.raises(ValueError, match="CueRules"):
            CueRules(**{field: value})


# --- restore_punctuation ---


def test_restore_english_punctuation_case_and_skipped_word() -> None:
    transcript = "Hello, world! I really “like” it. Don't you?"
    aligned = _timed(["hello", "world", "i", "like", "it", "dont", "you"])
    out = restore_punctuation(transcript, aligned)
    assert [w.text for w in out] == ["Hello,", " world!", " I really", " “like”", " it.", " Don't", " you?"]
    assert [(w.start, w.end) for w in out] == [(w.start, w.end) for w in aligned]


def test_restore_tolerates_mismatches() -> None:
    transcript = "The colour is 20 percent brighter."
    aligned = _timed(["the", "color", "is", "twenty", "percent", "brighter"])
    out = restore_punctuation(transcript, aligned)
    assert "".join(w.text for w in out) == transcript
    assert [w.text for w in out] == ["The", " colour", " is", " 20", " percent", " brighter."]


def test_restore_extra_item_keeps_its_text_unless_asked() -> None:
    aligned = _timed(["fifty", "percent"])
    kept = restore_punctuation("Fifty.", aligned)
    assert [w.text for w in kept] == ["Fifty.", " percent"]
    dropped = restore_punctuation("Fifty.", aligned, keep_unmatched=False)
    assert [w.text for w in dropped] == ["Fifty."]


def test_restore_chinese_and_mixed() -> None:
    transcript = "我们用 Python 写程序，好不好？「可以」。"
    aligned = _timed(["我", "们", "用", "python", "写", "程", "序", "好", "不", "好", "可", "以"], step=0.25)
    out = restore_punctuation(transcript, aligned)
    assert "".join(w.text for w in out) == transcript
    assert [w.text for w in out][2:5] == ["用", " Python", " 写"]
    assert out[6].text == "序，" and out[-2].text == "「可"
    assert join_words(out) == transcript


def test_restore_edge_cases() -> None:
    assert restore_punctuation("Hello.", []) == []
    out = restore_punctuation("...", _timed(["um"]))
    assert "".join(w.text for w in out).startswith("...")
    out = restore_punctuation("Ｈｅｌｌｏ　ｗｏｒｌｄ", _timed(["hello", "world"]))  # full-width, ideographic space
    assert [w.text for w in out] == ["Ｈｅｌｌｏ", " ｗｏｒｌｄ"]
    out = restore_punctuation("Café résumé", _timed(["cafe", "resume"]))
    assert [w.text for w in out] == ["Café", " résumé"]


def _transcripts() -> st.SearchStrategy[str]:
    token = st.one_of(
        st.sampled_from(EN).map(lambda w: " " + w),
        st.sampled_from(EN).map(lambda w: " " + w.capitalize()),
        st.sampled_from(ZH),
        st.sampled_from(JA),
        st.sampled_from(CLOSING),
        st.sampled_from([" “", " (", "「", " 123", " 3.5%"]),
    )
    size = st.sampled_from([1, 5, 20, 80])
    return size.flatmap(lambda n: st.lists(token, min_size=n, max_size=n)).map("".join)


def _simulated_aligner(transcript: str, data: st.DataObject) -> list[WordTiming]:
    """Bare items as a forced aligner returns them: no punctuation, lower case, some skipped/merged."""
    norm = normalise_space(transcript)
    items = [match_key(norm[a:b])[0] for a, b in unit_spans(norm, 0, len(norm))]
    items = [x for x in items if x]
    out: list[str] = []
    for item in items:
        action = data.draw(st.sampled_from(["keep"] * 8 + ["skip", "merge"]))
        if action == "skip" and len(items) > 1:
            continue
        if action == "merge" and out:
            out[-1] += item
        else:
            out.append(item)
    t, timed = 0.0, []
    for item in out:
        t += data.draw(st.floats(0, 0.8, allow_subnormal=False))
        length = data.draw(st.floats(0, 0.6, allow_subnormal=False))
        timed.append(WordTiming(item, round(t, 3), round(t + length, 3)))
        t += length
    return timed


@settings(max_examples=150, deadline=None)
@given(transcript=_transcripts(), data=st.data())
def test_restore_properties(transcript: str, data: st.DataObject) -> None:
    aligned = _simulated_aligner(transcript, data)
    out = restore_punctuation(transcript, aligned)
    if not aligned:
        assert out == []
        return
    assert "".join(w.text for w in out) == normalise_space(transcript)
    assert not out[0].text.startswith(" ")
    assert all(w.text.strip() and not w.text.startswith("  ") for w in out)
    timings = [(w.start, w.end) for w in aligned]
    got = [(w.start, w.end) for w in out]
    it = iter(timings)
    assert all(g in it for g in got)  # a subsequence of the aligner's timings, in order


# --- fast_timings ---


def test_fast_timings_follow_speech_regions() -> None:
    text = "Hello there, my friend. 今天天气很好。How are you?"
    regions = [(0.5, 2.0), (3.0, 3.2), (4.0, 7.5)]
    words = fast_timings(text, regions, offset=100.0, duration=8.0)
    assert "".join(w.text for w in words) == text
    for w in words:
        assert any(100 + a - 1e-9 <= w.start <= w.end <= 100 + b + 1e-9 for a, b in regions)
    assert all(a.end <= b.start + 1e-9 for a, b in itertools.pairwise(words))
    assert words[0].start == pytest.approx(100.5)


def test_fast_timings_weights_cjk_and_spreads_without_regions() -> None:
    words = fast_timings("ab 你", [], duration=10.0)
    latin, han = words[0].end - words[0].start, words[1].end - words[1].start
    assert han > latin  # one Han syllable takes longer than a two-letter word
    assert words[0].start == 0.0 and words[-1].end == pytest.approx(10.0)
    assert fast_timings("", [(0, 1)], duration=1.0) == []
    assert fast_timings("…", [(0.5, 0.8)], duration=1.0) == [WordTiming("…", 0.5, 0.8)]
    with pytest.raises(ValueError):
        fast_timings("x", [], duration=-1.0)


@settings(max_examples=100, deadline=None)
@given(
    text=_transcripts(),
    regions=st.lists(
        st.tuples(st.floats(-5, 4000, allow_subnormal=False), st.floats(0, 30, allow_subnormal=False)), max_size=12
    ),
    offset=st.floats(0, 8000, allow_subnormal=False),
    duration=st.floats(0.5, 4000, allow_subnormal=False),
)
def test_fast_timings_properties(text: str, regions: list[tuple[float, float]], offset: float, duration: float) -> None:
    spans = [(a, a + length) for a, length in regions]
    words = fast_timings(text, spans, offset=offset, duration=duration)
    assert "".join(w.text for w in words) == normalise_space(text)
    usable: list[list[float]] = []
    for a, b in sorted((max(a, 0), min(b, duration)) for a, b in spans if min(b, duration) > max(a, 0)):
        if usable and a <= usable[-1][1]:
            usable[-1][1] = max(usable[-1][1], b)  # touching regions are one stretch of speech
        else:
            usable.append([a, b])
    usable = usable or [[0.0, duration]]
    for w in words:
        assert offset - 1e-6 <= w.start <= w.end <= offset + duration + 1e-6
        assert any(offset + a - 1e-6 <= w.start and w.end <= offset + b + 1e-6 for a, b in usable)
    assert all(a.end <= b.start + 1e-6 for a, b in itertools.pairwise(words))


# --- build_cues ---


def test_sentences_and_pauses_end_cues() -> None:
    words = _latin("Hello there. How are you? Fine")
    cues = build_cues(words, 10.0)
    assert [c.text for c in cues] == ["Hello there.", "How are you?", "Fine"]
    assert [c.index for c in cues] == [1, 2, 3]
    words = _words([("I", 0.0, 0.2), (" waited", 0.3, 0.6), (" and", 1.5, 1.7), (" waited", 1.8, 2.1)])
    assert [c.text for c in build_cues(words, 5.0)] == ["I waited", "and waited"]


def test_chinese_sentence_punctuation_and_no_spaces() -> None:
    words = _timed(list("你好。") + list("今天天气很好！"), step=0.25, length=0.2)
    assert [c.text for c in build_cues(words, 10.0)] == ["你好。", "今天天气很好！"]
    words = _timed(["ありがとう", "ございます。", "はい"], step=0.6, length=0.5)
    assert [c.text for c in build_cues(words, 10.0)] == ["ありがとうございます。", "はい"]


def test_long_sentence_splits_into_two_line_cues() -> None:
    text = " ".join(EN * 3)
    cues = build_cues(_latin(text), 60.0)
    assert len(cues) > 1
    assert _squash("".join(c.text for c in cues)) == _squash(text)
    for cue in cues:
        lines = cue.text.split("\n")
        assert len(lines) <= 2 and all(display_width(x) <= 42 for x in lines)
        assert cue.end - cue.start <= 7.0


def test_split_prefers_clause_boundaries() -> None:
    text = "When the weather finally turned warm last spring, we drove out to the coast and stayed for a week"
    cues = build_cues(_timed([(" " if k else "") + w for k, w in enumerate(text.split())], step=0.2), 30.0)
    assert cues[0].text.replace("\n", " ").endswith("spring,")


def test_max_duration_splits_slow_speech() -> None:
    words = _timed([(" " if k else "") + w for k, w in enumerate(["so", "very", "slow", "words", "here"])], step=2.0)
    cues = build_cues(words, 20.0, CueRules(pause_split=5.0))
    assert len(cues) >= 2 and all(c.end - c.start <= 7.0 for c in cues)


def test_reading_speed_closes_a_cue_before_a_dense_burst() -> None:
    # Readable words, then a burst too fast to read, then more speech straight after it: the cue
    # closes while it is still readable instead of swallowing the burst.
    burst = [(" " + w, 1.35 + 0.05 * k, 1.4 + 0.05 * k) for k, w in enumerate(["and", "then", "talk", "very", "fast"])]
    calm = ["before", "we", "slow", "down", "again"] * 4
    after = [(" " + w, 1.65 + 0.3 * k, 1.9 + 0.3 * k) for k, w in enumerate(calm)]  # ~17 cps
    words = _words([("We", 0.0, 0.3), (" start", 0.35, 0.8), (" slowly", 0.85, 1.3), *burst, *after])
    cues = build_cues(words, 10.0, CueRules(pause_split=2.0))
    assert cues[0].text == "We start slowly"
    assert _squash("".join(c.text for c in cues)) == _squash(join_words(words))
    # Uniformly dense speech is not chopped into flickering one-word cues.
    fast = _timed(
        [(" " if k else "") + w for k, w in enumerate(["one", "two", "three", "four", "five", "six"])], step=0.1
    )
    assert len(build_cues(fast, 1.0, CueRules(pause_split=2.0))) == 1


def test_min_duration_extension_and_gap() -> None:
    words = _words([("Hi.", 1.0, 1.2), ("Bye.", 1.5, 1.6), ("Later.", 5.0, 5.3)])
    cues = build_cues(words, 10.0)
    assert cues[0].start == 1.0 and cues[0].end == pytest.approx(1.5 - 0.083)  # limited by the next cue
    assert cues[1].end == pytest.approx(1.5 + 5 / 6, abs=1e-3)  # extended to min_duration
    assert cues[2].end == pytest.approx(5.0 + 5 / 6, abs=1e-3)


def test_zero_duration_words_clamping_and_crowding() -> None:
    cues = build_cues(_words([("Yes.", 2.0, 2.0)]), 10.0)
    assert cues[0].end > cues[0].start == 2.0
    cues = build_cues(_words([("Late", 9.9, 12.0), (" words", 12.0, 13.0)]), 10.0)
    assert cues[-1].end <= 10.0 and all(c.end > c.start for c in cues)
    crowded = _timed(["A.", "B.", "C.", "D.", "E."], step=0.0, length=0.0, start=0.1)
    cues = build_cues(crowded, 0.2)
    assert _squash("".join(c.text for c in cues)) == "A.B.C.D.E."
    _check_timing(cues, 0.2, CueRules())
    with pytest.raises(ValueError):
        build_cues(crowded, 0.0)
    assert build_cues([], 5.0) == [] and build_cues(_words([(" ", 0, 1)]), 5.0) == []


def test_raw_aligner_words_get_spaces_by_script() -> None:
    cues = build_cues(_timed(["hello", "world", "你", "好", "again"]), 10.0)
    assert cues[0].text == "hello world你好again"
    cues = build_cues(_timed(["我", " like", " Python", "。"]), 10.0)
    assert cues[0].text == "我 like Python。"


def test_hour_long_timestamps_serialise() -> None:
    words = _latin("Still talking after many hours of recording.")
    words = [WordTiming(w.text, w.start + 3 * 3600 + 59 * 60 + 58.5, w.end + 3 * 3600 + 59 * 60 + 58.5) for w in words]
    cues = build_cues(words, 4 * 3600 + 10.0)
    text = to_srt(cues)
    assert "03:59:58,500 -->" in text and ",1000" not in text
    assert "04:00:0" in to_vtt(cues)


def test_payloads() -> None:
    cues = [Cue(1, 0.0, 1.5, "Hello there,\nmy friend."), Cue(2, 2.0, 3.0, "你好，\n世界。")]
    assert segments_from_cues(cues) == [
        {"id": 0, "start": 0.0, "end": 1.5, "text": "Hello there, my friend."},
        {"id": 1, "start": 2.0, "end": 3.0, "text": "你好，世界。"},
    ]
    assert words_payload(_words([("Hi", 0.0, 0.12345), (" there", 0.2, 0.4)])) == [
        {"word": "Hi", "start": 0.0, "end": 0.123},
        {"word": "there", "start": 0.2, "end": 0.4},
    ]


# --- build_cues properties, checked through independent SRT and WebVTT parsers ---


def _check_timing(cues: list[Cue], duration: float, rules: CueRules) -> None:
    for k, cue in enumerate(cues):
        assert cue.index == k + 1
        assert 0 <= cue.start < cue.end <= duration + 1e-9
        assert cue.end - cue.start <= rules.max_duration + 1e-9
        assert cue.start == round(cue.start, 3) and cue.end == round(cue.end, 3)
    for a, b in itertools.pairwise(cues):
        assert b.start - a.end >= rules.min_gap - 1e-6


def _check_layout(cues: list[Cue], rules: CueRules) -> None:
    def unbreakable(line: str) -> bool:
        return not any(
            can_break_between(line[i - 1], line[i + 1], True)
            if line[i] == " "
            else line[i - 1] != " " and can_break_between(line[i - 1], line[i], False)
            for i in range(1, len(line) - 1)
        )

    for cue in cues:
        lines = cue.text.split("\n")
        forced = [x for x in lines if display_width(x) > rules.max_line_width]
        assert all(unbreakable(x) for x in forced)  # too wide only for one unbreakable token
        if len(lines) > rules.max_lines:
            assert forced


def _check_serialised(cues: list[Cue]) -> None:
    srt_text, vtt_text = to_srt(cues), to_vtt(cues)
    assert ",1000" not in srt_text and ".1000" not in vtt_text
    parsed = list(srt.parse(srt_text))
    assert [(p.start.total_seconds(), p.end.total_seconds(), p.content) for p in parsed] == [
        (pytest.approx(c.start, abs=5e-4), pytest.approx(c.end, abs=5e-4), c.text) for c in cues
    ]
    captions = webvtt.from_buffer(io.StringIO(vtt_text)).captions
    assert [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds(), c.text) for c in captions] == [
        (round(c.start * 1000), round(c.end * 1000), c.text) for c in cues
    ]


def _word_texts() -> st.SearchStrategy[list[str]]:
    """Word texts under the spacing convention, in one of several languages."""
    en = st.tuples(st.sampled_from(EN), st.sampled_from(["", "", "", ",", ".", "?", "!"])).map(
        lambda p: " " + p[0] + p[1]
    )
    long = st.text("abcdefghij", min_size=43, max_size=60).map(lambda w: " " + w)
    zh = st.tuples(st.sampled_from(ZH), st.sampled_from([""] * 5 + ["，", "。", "？", "！", "…"])).map("".join)
    ja = st.tuples(st.sampled_from(JA), st.sampled_from([""] * 5 + ["、", "。"])).map("".join)
    mixed = st.one_of(zh, zh, en, en.map(str.strip))
    language = st.sampled_from(["en", "zh", "ja", "mixed", "long"])
    pick = {"en": en, "zh": zh, "ja": ja, "mixed": mixed, "long": st.one_of(en, en, en, long)}
    size = st.sampled_from([1, 3, 12, 40, 150])  # hypothesis alone favours very short lists
    return st.tuples(language, size).flatmap(lambda p: st.lists(pick[p[0]], min_size=p[1], max_size=p[1]))


@st.composite
def _timed_words(draw: st.DrawFn) -> tuple[list[WordTiming], float]:
    texts = draw(_word_texts())
    t = draw(st.sampled_from([0.0, 0.5, 3599.0, 7300.25]))
    words = []
    for text in texts:
        t += draw(st.sampled_from([0.0, 0.0, 0.05, 0.2, 0.6, 2.5]))
        length = draw(st.sampled_from([0.0, 0.09, 0.2, 0.35, 0.8, 9.0]))
        words.append(WordTiming(text.lstrip() if not words else text, round(t, 3), round(t + length, 3)))
        t += length
    duration = max(0.01, t + draw(st.sampled_from([-1.0, 0.0, 0.05, 3.0])))
    return words, duration


@settings(max_examples=150, deadline=None)
@given(data=_timed_words(), rules=st.sampled_from([CueRules(), CueRules(max_lines=1, max_line_width=32)]))
def test_build_cues_properties(data: tuple[list[WordTiming], float], rules: CueRules) -> None:
    words, duration = data
    cues = build_cues(words, duration, rules)
    assert cues
    assert _squash("".join(c.text for c in cues)) == _squash(join_words(words))
    # Each cue is made of whole words in order: its text is the spaced join of a run of them.
    assert "".join(c.text.replace("\n", "") for c in cues).replace(" ", "") == _squash(join_words(words))
    _check_timing(cues, duration, rules)
    if min(w.end - w.start for w in words) > 0.08 and max(w.end for w in words) <= duration:
        _check_layout(cues, rules)  # no crowding (zero-length words, clamping) that forces merges
    _check_serialised(cues)


@settings(max_examples=60, deadline=None)
@given(transcript=_transcripts(), data=st.data())
def test_pipeline_properties(transcript: str, data: st.DataObject) -> None:
    """Aligner items -> restore_punctuation -> build_cues, and the no-aligner path."""
    aligned = _simulated_aligner(transcript, data)
    duration = (aligned[-1].end if aligned else 0.0) + 1.0
    for words in (
        restore_punctuation(transcript, aligned),
        fast_timings(transcript, [(0.2, duration)], duration=duration),
    ):
        if not words:
            continue
        cues = build_cues(words, duration)
        assert _squash("".join(c.text for c in cues)) == _squash(transcript)
        _check_timing(cues, duration, CueRules())
        _check_serialised(cues)

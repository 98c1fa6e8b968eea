"""Display width, script detection, line breaking, transcript units and character alignment (asr_server.text)."""

from __future__ import annotations

import itertools
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_server.text import char_align
from asr_server.text.char_align import align_chars, match_spans
from asr_server.text.line_breaking import (
    NO_LINE_END,
    NO_LINE_START,
    can_break_between,
    display_width,
    has_cjk,
    is_cjk,
    wrap_lines,
)
from asr_server.text.units import ends_sentence, normalise_space, split_gap, unit_spans

EN_WORDS = re.findall(
    r"\w+", "the quick brown fox jumps over a lazy dog and then runs because it is late which was odd"
)
ZH_CHARS = list("我们今天天气很好去公园散步然后吃饭觉得这是一个非常的主意")
JA_CHARS = list("こんにちはとても良い天気ですね散歩に行きましょうかっゃー")
PUNCT = list(",.!?;:，。！？、；：“”「」（）…—'\"")


def _tokens() -> st.SearchStrategy[str]:
    latin = st.sampled_from(EN_WORDS).map(lambda w: " " + w)
    long_word = st.text(alphabet="abcdefghij", min_size=30, max_size=60).map(lambda w: " " + w)
    return st.one_of(
        latin, latin, st.sampled_from(ZH_CHARS), st.sampled_from(JA_CHARS), st.sampled_from(PUNCT), long_word
    )


texts = st.lists(_tokens(), min_size=0, max_size=120).map("".join)


def _is_candidate(line: str, i: int) -> bool:
    """Whether wrap_lines could break `line` before index i."""
    if line[i] == " ":
        return 0 < i < len(line) - 1 and can_break_between(line[i - 1], line[i + 1], spaced=True)
    return line[i - 1] != " " and can_break_between(line[i - 1], line[i], spaced=False)


def _greedy_line_count(text: str, width: int) -> int:
    """Fewest lines by first-fit over the same break candidates (optimal for line count)."""
    s = normalise_space(text)
    cands = []
    for i in range(1, len(s)):
        if _is_candidate(s, i):
            cands.append((i, i + 1) if s[i] == " " else (i, i))
    lines, start = 1, 0
    while display_width(s[start:]) > width:
        fitting = [c for c in cands if c[0] > start and display_width(s[start : c[0]]) <= width]
        later = [c for c in cands if c[0] > start]
        if not later:
            break
        start = (fitting[-1] if fitting else later[0])[1]
        lines += 1
    return lines


def _rejoins(text: str, lines: list[str]) -> bool:
    """Lines concatenated, with the single space a break removed, give the normalised text."""
    rest = normalise_space(text)
    for line in lines:
        if not rest.startswith(line):
            return False
        rest = rest[len(line) :]
        rest = rest[1:] if rest.startswith(" ") else rest
    return rest == ""


def test_display_width() -> None:
    assert display_width("") == 0
    assert display_width("hello") == 5
    assert display_width("你好") == 4
    assert display_width("中文abc") == 7
    assert display_width("ＡＢ") == 4  # full-width Latin
    assert display_width("e\u0301") == 1  # combining acute accent takes no column
    assert display_width("ｶﾀｶﾅ") == 4  # half-width katakana stay narrow
    assert display_width("안녕") == 4


def test_is_cjk_and_has_cjk() -> None:
    assert is_cjk("中") and is_cjk("か") and is_cjk("カ") and is_cjk("한") and is_cjk("，")
    assert not is_cjk("a") and not is_cjk("é") and not is_cjk(" ")
    assert has_cjk("hello 世界") and not has_cjk("hello world")
    with pytest.raises(ValueError):
        is_cjk("ab")


def test_short_text_stays_on_one_line() -> None:
    assert wrap_lines("Hello  world ") == ["Hello world"]
    assert wrap_lines("") == [] and wrap_lines("   ") == []


def test_english_breaks_after_clause_punctuation() -> None:
    lines = wrap_lines("I went to the market this morning, and I bought some fresh bread.")
    assert lines == ["I went to the market this morning,", "and I bought some fresh bread."]


def test_english_prefers_break_before_conjunction_and_balance() -> None:
    lines = wrap_lines("We stayed inside all afternoon because the rain would not stop falling")
    assert lines == ["We stayed inside all afternoon", "because the rain would not stop falling"]
    lines = wrap_lines("one two three four five six seven eight nine ten eleven twelve thirteen")
    widths = [display_width(x) for x in lines]
    assert len(lines) == 2 and abs(widths[0] - widths[1]) <= 12


def test_chinese_breaks_without_spaces_and_never_before_closing_punctuation() -> None:
    text = "今天天气很好，我们一起去公园散步吧。然后我们去吃饭，好不好？"
    lines = wrap_lines(text)
    assert "".join(lines) == text
    assert all(" " not in line for line in lines)
    assert all(display_width(line) <= 42 for line in lines)
    assert all(line[0] not in NO_LINE_START for line in lines)
    assert lines[0].endswith("。")  # the sentence end is the natural break


def test_kinsoku_with_narrow_width() -> None:
    for width in range(4, 20):
        lines = wrap_lines("「你好」，他说。我们走吧！好的，走。", max_width=width)
        assert all(line[0] not in NO_LINE_START for line in lines[1:])
        assert all(line[-1] not in NO_LINE_END for line in lines[:-1])


def test_mixed_chinese_english_keeps_spaces() -> None:
    text = "我今天用 Python 写了一个 speech recognition 的程序，效果还不错，你要不要试一试呢？"
    lines = wrap_lines(text)
    assert _rejoins(text, lines)
    assert "speech recognition" in "".join(lines) or any(line.endswith("speech") for line in lines)
    assert all(display_width(line) <= 42 for line in lines)


def test_unbreakable_token_gets_own_line_and_too_long_text_is_not_truncated() -> None:
    url = "https://example.com/" + "a" * 50
    lines = wrap_lines(f"see {url} now")
    assert url in lines
    long_text = " ".join(EN_WORDS * 3)
    lines = wrap_lines(long_text, max_width=42, max_lines=2)
    assert len(lines) > 2 and _rejoins(long_text, lines)
    assert all(display_width(line) <= 42 for line in lines)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        wrap_lines("x", max_width=0)
    with pytest.raises(ValueError):
        wrap_lines("x", max_lines=0)


def test_long_text_is_fast() -> None:
    text = "".join(ZH_CHARS * 60) + " " + " ".join(EN_WORDS * 60)
    began = time.perf_counter()
    lines = wrap_lines(text)
    assert time.perf_counter() - began < 2.0
    assert _rejoins(text, lines)


def test_units_and_gaps() -> None:
    text = "“Hello,” she said. 你好，世界！Use Python 3.12 now."
    spans = unit_spans(text, 0, len(text))
    assert [text[a:b] for a, b in spans] == [
        "Hello",
        "she",
        "said",
        "你",
        "好",
        "世",
        "界",
        "Use",
        "Python",
        "3.12",
        "now",
    ]
    assert split_gap(",” “") == (",”", " “")
    assert split_gap(" really ") == (" really", " ")
    assert split_gap("。「") == ("。", "「")


def test_ends_sentence() -> None:
    assert ends_sentence("end.") and ends_sentence("why?") and ends_sentence("好。") and ends_sentence('go."')
    assert ends_sentence("wait...") and ends_sentence("真的…")
    assert not ends_sentence("Dr.") and not ends_sentence("e.g.") and not ends_sentence("U.S.")
    assert not ends_sentence("hello,") and not ends_sentence("3.5")


def test_align_chars() -> None:
    assert align_chars("ilikeit", "ireallylikeit").tolist() == [0, 7, 8, 9, 10, 11, 12]
    assert align_chars("thecolorist", "thecolouris").tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, -1]
    assert align_chars("", "abc").tolist() == [] and align_chars("ab", "").tolist() == [-1, -1]
    text = "Twenty-one “quick” foxes, 你好！"
    assert [text[a:b] for a, b in match_spans(text, ["twenty", "one", "quick", "foxes", "你", "好"])] == [
        "Twenty",
        "one",
        "quick",
        "foxes",
        "你",
        "好",
    ]
    assert match_spans("hello", ["hello", "zzz"])[1] is None


def test_align_chars_splits_huge_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    items = "thequickbrownfox" * 40
    key = "thequickbrownfoxjumps" * 40
    whole = align_chars(items, key)
    monkeypatch.setattr(char_align, "_MAX_CELLS", 2000)
    split = align_chars(items, key)
    for mapping in (whole, split):
        hits = mapping[mapping >= 0]
        assert (hits[1:] > hits[:-1]).all() and hits.size >= 0.9 * len(items)
        assert all(key[j] == items[i] for i, j in enumerate(mapping) if j >= 0)


@settings(max_examples=150, deadline=None)
@given(text=texts, width=st.integers(min_value=8, max_value=60), max_lines=st.integers(1, 3))
def test_wrap_properties(text: str, width: int, max_lines: int) -> None:
    lines = wrap_lines(text, max_width=width, max_lines=max_lines)
    norm = normalise_space(text)
    assert _rejoins(text, lines)
    assert "".join(lines).replace(" ", "") == norm.replace(" ", "")
    assert all(line and line == line.strip() for line in lines)
    for line in lines:
        # Too wide only where the line holds no break opportunity at all (one unbreakable token).
        if display_width(line) > width:
            assert not any(_is_candidate(line, i) for i in range(1, len(line)))
    for previous, line in itertools.pairwise(lines):
        assert line[0] not in NO_LINE_START
        assert previous[-1] not in NO_LINE_END
    if display_width(norm) <= width:
        assert lines == ([norm] if norm else [])
    assert len(lines) == (_greedy_line_count(text, width) if norm else 0)

"""Display width and line breaking for subtitles in Latin and CJK scripts.

`wrap_lines` is a small optimal line breaker: it finds the fewest lines that fit, and among those the
layout with the most even line lengths and the most natural break points (after clause punctuation,
before conjunctions; CJK may break between any two characters, but never before closing punctuation
or after opening punctuation, the Japanese/Chinese "kinsoku" rules).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

# Code point ranges of the CJK scripts and their punctuation / full-width forms.
_CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2E80, 0x2FFF),  # CJK radicals, Kangxi radicals, ideographic description
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x33FF),  # Bopomofo, Hangul compatibility Jamo, Kanbun, enclosed and compatibility forms
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xA960, 0xA97F),  # Hangul Jamo Extended-A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo Extended-B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE10, 0xFE1F),  # vertical forms
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # half-width and full-width forms
    (0x1B000, 0x1B16F),  # Kana supplement and extensions
    (0x20000, 0x3FFFF),  # CJK Extension B and later
)
_HANGUL_RANGES: tuple[tuple[int, int], ...] = (
    (0x1100, 0x11FF),
    (0x3130, 0x318F),
    (0xA960, 0xA97F),
    (0xAC00, 0xD7FF),
    (0xFFA0, 0xFFDC),
)

#: Characters that must not begin a line: closing punctuation and Japanese small kana / marks.
NO_LINE_START = frozenset(
    ",.!?;:%)]}»›…‥"
    "，。！？、；：”’）」』】》〕〉｝］〗〙〛〞〟｠｣・ー〜～ヽヾゝゞ々〻％．｡､"
    "ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ"
    "‼⁇⁈⁉‽"
)
#: Characters that must not end a line: opening punctuation.
NO_LINE_END = frozenset("([{«‹（「『【《〔〈｛［〖〘〚〝“‘｟｢")
#: Sentence-final punctuation in the scripts we subtitle.
SENTENCE_END = frozenset(".?!。？！…‼⁇⁈⁉‽｡．؟।॥։።")
#: Clause punctuation: a good place for a line or cue break.
CLAUSE_END = frozenset(",;:，、；：—–،؛､")
_ASCII_QUOTES = frozenset("\"'")
# Closing marks to look through when asking which punctuation ends a line.
_CLOSERS = (NO_LINE_START | _ASCII_QUOTES) - SENTENCE_END - CLAUSE_END
_CONJUNCTIONS = frozenset(
    ("and", "but", "or", "nor", "yet", "so", "because", "that", "which", "who", "whom", "whose", "while")
) | frozenset(("although", "though", "if", "when", "where", "since", "unless", "until", "whereas"))
# Words a line should not end on (an article or short preposition left dangling reads badly).
_WEAK_ENDS = frozenset(("a", "an", "the", "to", "of", "in", "on", "at", "for", "with", "by", "from")) | frozenset(
    ("my", "your", "his", "her", "its", "our", "their")
)

_PENALTY_SENTENCE = 0.0
_PENALTY_CLAUSE = 10.0
_PENALTY_CONJUNCTION = 80.0
_PENALTY_SCRIPT_CHANGE = 120.0
_PENALTY_PLAIN = 200.0
_PENALTY_WEAK_END = 400.0


def _in_ranges(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


@lru_cache(maxsize=4096)
def _char_width(char: str) -> int:
    category = unicodedata.category(char)
    if unicodedata.combining(char) or category in ("Mn", "Me", "Cf", "Cc"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Columns `text` takes on screen: wide/full-width characters 2, combining marks 0, others 1."""
    if text.isascii():
        return sum(1 for ch in text if ch.isprintable())
    return sum(_char_width(ch) for ch in text)


def is_cjk(char: str) -> bool:
    """Whether the single character `char` is Chinese, Japanese or Korean (incl. CJK punctuation)."""
    if len(char) != 1:
        raise ValueError(f"is_cjk takes one character, got {len(char)}")
    return _in_ranges(ord(char), _CJK_RANGES)


def has_cjk(text: str) -> bool:
    """Whether `text` holds any CJK character."""
    return any(is_cjk(ch) for ch in text)


def breaks_anywhere(char: str) -> bool:
    """Whether lines may break next to `char` without a space: Chinese and Japanese, not Hangul
    (Korean separates words with spaces and breaks there, like Latin scripts)."""
    return is_cjk(char) and not _in_ranges(ord(char), _HANGUL_RANGES)


def can_break_between(left: str, right: str, spaced: bool) -> bool:
    """Whether a line may break between text ending in `left` and text starting with `right`
    (`spaced`: whitespace separates them; the whitespace is dropped at the break)."""
    if not left or not right:
        return False
    a, b = left[-1], right[0]
    if b in NO_LINE_START or a in NO_LINE_END:
        return False
    if spaced:
        return True
    if a in _ASCII_QUOTES or b in _ASCII_QUOTES:
        return False  # ASCII quotes may open or close: never risk a dangling one
    return breaks_anywhere(a) or breaks_anywhere(b)


def _word_before(s: str, end: int) -> str:
    start = s.rfind(" ", 0, end) + 1
    return s[start:end].strip(".,;:!?\"'()").lower()


def _word_after(s: str, start: int) -> str:
    end = s.find(" ", start)
    return s[start : len(s) if end < 0 else end].strip(".,;:!?\"'()").lower()


def break_penalty(s: str, end: int, nxt: int) -> float:
    """Badness of breaking `s` into `s[:end]` and `s[nxt:]` (0: ideal, 400: poor). On the scale of
    the squared slack `wrap_lines` balances lines by: a clause break is worth ~14 columns of imbalance."""
    prev = s[end - 1]
    # Look through closing quotes/brackets: `He said "go."` ends a sentence too.
    k = end - 1
    while k > 0 and s[k] in _CLOSERS:
        k -= 1
    if s[k] in SENTENCE_END or prev in SENTENCE_END:
        return _PENALTY_SENTENCE
    if s[k] in CLAUSE_END or prev in CLAUSE_END:
        return _PENALTY_CLAUSE
    if nxt > end:  # a break at whitespace
        if _word_after(s, nxt) in _CONJUNCTIONS:
            return _PENALTY_CONJUNCTION
        if _word_before(s, end) in _WEAK_ENDS:
            return _PENALTY_WEAK_END
        if breaks_anywhere(prev) != breaks_anywhere(s[nxt]):
            return _PENALTY_SCRIPT_CHANGE
        return _PENALTY_PLAIN
    if breaks_anywhere(prev) != breaks_anywhere(s[nxt]):
        return _PENALTY_SCRIPT_CHANGE
    return _PENALTY_PLAIN


def _candidates(s: str) -> list[tuple[int, int, float]]:
    """Allowed breaks in `s` as (end of this line, start of the next line, penalty)."""
    found: list[tuple[int, int, float]] = []
    n = len(s)
    i = 1
    while i < n:
        if s[i] == " ":
            j = i
            while j < n and s[j] == " ":
                j += 1
            if j < n and can_break_between(s[i - 1], s[j], spaced=True):
                found.append((i, j, break_penalty(s, i, j)))
            i = j + 1
            continue
        if s[i - 1] != " " and can_break_between(s[i - 1], s[i], spaced=False):
            found.append((i, i, break_penalty(s, i, i)))
        i += 1
    return found


def wrap_lines(text: str, max_width: int = 42, max_lines: int = 2) -> list[str]:
    """Break `text` into display lines of at most `max_width` columns.

    Uses the fewest lines possible, balanced in length and broken at natural points. Whitespace runs
    are collapsed to one space and dropped at breaks; no other character is added or removed. Text
    that needs more than `max_lines` lines still comes back whole, in more lines (the caller splits
    the cue); a single unbreakable token wider than `max_width` gets a line of its own.
    """
    if max_width < 1 or max_lines < 1:
        raise ValueError("max_width and max_lines must be at least 1")
    s = " ".join(text.split())
    if not s:
        return []
    if display_width(s) <= max_width:
        return [s]
    return _wrap(s, max_width)


def _wrap(s: str, max_width: int) -> list[str]:
    prefix = [0]
    for ch in s:
        prefix.append(prefix[-1] + _char_width(ch))
    # Nodes: the text start, each candidate break, the text end; (line end, next line start, penalty).
    nodes = [(0, 0, 0.0), *_candidates(s), (len(s), len(s), 0.0)]
    inf = (float("inf"), float("inf"))
    best: list[tuple[float, float]] = [(0.0, 0.0)] + [inf] * (len(nodes) - 1)
    back = [0] * len(nodes)
    for k in range(1, len(nodes)):
        end, _, penalty = nodes[k]
        for p in range(k - 1, -1, -1):
            width = prefix[end] - prefix[nodes[p][1]]
            if width > max_width and p != k - 1:
                break  # earlier starts only make the line wider
            if best[p] == inf:
                continue
            # Squared slack balances the lines: for a fixed line count it is least when all are even.
            slack = max(0, max_width - width)
            cost = (best[p][0] + 1, best[p][1] + slack * slack + penalty)
            if cost < best[k]:
                best[k], back[k] = cost, p
    lines: list[str] = []
    k = len(nodes) - 1
    while k > 0:
        p = back[k]
        lines.append(s[nodes[p][1] : nodes[k][0]])
        k = p
    return lines[::-1]

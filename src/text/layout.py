"""Text handling for subtitles in Latin and CJK scripts: display width, line breaking, transcript
units, and aligning an aligner's bare words back onto the transcript.

`wrap_lines` is a small optimal line breaker: it finds the fewest lines that fit, and among those the
layout with the most even line lengths and the most natural break points (after clause punctuation,
before conjunctions; CJK may break between any two characters, but never before closing punctuation
or after opening punctuation, the Japanese/Chinese "kinsoku" rules).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

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


# --- Units of a transcript: words (Latin, Hangul) or characters (Chinese, Japanese) ---

# Marks that belong to the following unit when they end a gap between two units.
_OPENERS = NO_LINE_END | frozenset("\"'¿¡")
_ABBREVIATIONS = frozenset(
    ["mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "e.g.", "i.e.", "jr.", "sr.", "no.", "approx."]
)


def normalise_space(text: str) -> str:
    """`text` with each whitespace run collapsed to one space, stripped."""
    return " ".join(text.split())


def is_punct(char: str) -> bool:
    """Whether `char` is Unicode punctuation (category P*)."""
    return unicodedata.category(char).startswith("P")


def match_key(text: str) -> tuple[str, list[int]]:
    """Matching key of `text` (letters and digits, case- and accent-folded) and each key char's index."""
    chars: list[str] = []
    where: list[int] = []
    for index, char in enumerate(text):
        for folded in unicodedata.normalize("NFKD", char).casefold():
            if folded.isalnum():
                chars.append(folded)
                where.append(index)
    return "".join(chars), where


def unit_spans(text: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """Spans of the units in text[lo:hi]: a Latin-style word without its outer punctuation, or one
    Chinese/Japanese character. Pure punctuation is not a unit."""
    spans: list[tuple[int, int]] = []
    i = lo
    while i < hi:
        char = text[i]
        if char == " ":
            i += 1
        elif breaks_anywhere(char):
            if not is_punct(char) and char not in NO_LINE_START and char not in NO_LINE_END:
                spans.append((i, i + 1))
            i += 1
        else:
            j = i
            while j < hi and text[j] != " " and not breaks_anywhere(text[j]):
                j += 1
            a, b = i, j
            while a < b and is_punct(text[a]):
                a += 1
            while b > a and is_punct(text[b - 1]):
                b -= 1
            if a < b:
                spans.append((a, b))
            i = j
    return spans


def split_gap(gap: str) -> tuple[str, str]:
    """Split text between two units: opening marks (and the space before them) go to the next unit,
    everything else (closing punctuation, a skipped word) stays with the previous one."""
    cut = len(gap)
    while cut > 0 and gap[cut - 1] in _OPENERS:
        cut -= 1
    if cut > 0 and gap[cut - 1] == " ":
        cut -= 1
    return gap[:cut], gap[cut:]


def attach_gaps(text: str, spans: list[tuple[int, int]]) -> list[str]:
    """Pieces of `text` around ordered, disjoint unit `spans`, together covering all of it: text
    between two spans is divided by `split_gap`, text before the first / after the last joins it."""
    pieces = [text[a:b] for a, b in spans]
    for k in range(len(spans) - 1):
        tail, lead = split_gap(text[spans[k][1] : spans[k + 1][0]])
        pieces[k] += tail
        pieces[k + 1] = lead + pieces[k + 1]
    if pieces:
        pieces[0] = text[: spans[0][0]] + pieces[0]
        pieces[-1] += text[spans[-1][1] :]
    return pieces


def needs_space(left: str, right: str) -> bool:
    """Space between two unspaced words by script: none next to Chinese/Japanese or before closing
    punctuation."""
    return not (breaks_anywhere(left[-1]) or breaks_anywhere(right[0]) or right[0] in NO_LINE_START)


def join_pieces(pieces: Iterable[str]) -> str:
    """Join transcript pieces (chunks, segments): one space between words, none next to CJK."""
    joined = ""
    for piece in (p.strip() for p in pieces):
        if piece:
            joined += (" " if joined and needs_space(joined, piece) else "") + piece
    return joined


def ends_sentence(core: str) -> bool:
    """Whether the word `core` ends a sentence (., ?, !, 。, …; not "Dr." or "U.S.")."""
    stripped = core.rstrip("\"'”’)]）」』】》")
    if not stripped or stripped[-1] not in SENTENCE_END:
        return False
    lower = stripped.lower()
    if lower in _ABBREVIATIONS or (len(stripped) == 2 and stripped[0].isupper()):  # "Dr.", "J."
        return False
    return not (len(stripped) >= 4 and lower.count(".") >= 2 and lower[-2] != ".")  # "U.S." not "..."


class LineFit:
    """Greedy line filling, one word at a time: the fewest lines `wrap_lines` can also reach."""

    def __init__(self, max_width: int, width: int) -> None:
        self.max_width = max_width
        self.lines = 1
        self.current = width  # columns on the current line
        self.tail = width  # columns since the last allowed break (what would move down)

    def add(self, width: int, space: bool, breakable: bool) -> None:
        sep = 1 if space else 0
        if self.current + sep + width <= self.max_width:
            self.current += sep + width
            self.tail = width if breakable else self.tail + sep + width
        elif breakable:
            self.lines += 1
            self.current = self.tail = width
        else:
            if self.tail < self.current:  # move the unbreakable tail down to a new line
                self.lines += 1
                self.current = self.tail
            self.current += sep + width
            self.tail = self.current


def speaking_cost(core: str) -> float:
    """Rough time to say a unit, in Latin-letter units (Mandarin ~4-5 syllables/s vs ~14 letters/s)."""
    cost = 1.0  # onset of every unit
    for char in core:
        if char.isdigit():
            cost += 3.0  # "1999" is "nineteen ninety-nine"
        elif breaks_anywhere(char):
            code = ord(char)
            cost += 1.5 if 0x3040 <= code <= 0x30FF else 3.0  # kana are single morae
        elif is_cjk(char):
            cost += 2.5  # Hangul syllable
        elif char.isalpha():
            cost += 1.0
    return cost


# --- Aligning bare words onto a transcript ---

_BAND_SLACK = 48  # key characters the alignment may stray beyond the two extreme diagonals
_MAX_CELLS = 8_000_000  # larger alignments are split in two first (caps the int32 table at 32 MB)


def align_chars(items: str, key: str) -> np.ndarray:
    """For each character of `items`, the index in `key` it aligns to, or -1 (banded Levenshtein).

    Cost O(len(items) x (|len(key) - len(items)| + 97)) in time and memory, numpy-vectorised per row.
    """
    m, n = len(items), len(key)
    lo = min(0, n - m) - _BAND_SLACK  # band of diagonals d = j - i that a path may use
    width = max(0, n - m) + _BAND_SLACK - lo + 1
    if m > 64 and (m + 1) * width > _MAX_CELLS:
        half, cut = m // 2, round(n * (m // 2) / m)  # split proportionally (pathological sizes only)
        right = align_chars(items[half:], key[cut:])
        return np.concatenate((align_chars(items[:half], key[:cut]), np.where(right >= 0, right + cut, -1)))
    big = np.int32(1 << 28)
    a = np.frombuffer(items.encode("utf-32-le"), dtype=np.uint32)
    b = np.frombuffer(key.encode("utf-32-le"), dtype=np.uint32)
    d = np.arange(lo, lo + width)
    table = np.empty((m + 1, width), dtype=np.int32)
    table[0] = np.where((d >= 0) & (d <= n), d, big)  # row 0: skip the first d key characters
    for i in range(1, m + 1):
        j = i + d
        valid = (j >= 0) & (j <= n)
        prev = table[i - 1]
        cost = np.where((j >= 1) & (j <= n), a[i - 1] != b[np.clip(j - 1, 0, max(n - 1, 0))], 1) if n else 1
        row = np.minimum(prev + cost, np.append(prev[1:], big) + 1)  # match/substitute, or drop item char
        row = np.where(valid, row, big)
        row = np.minimum.accumulate(row - d) + d  # skip key characters along the row
        table[i] = np.where(valid, np.minimum(row, big), big)
    mapping = np.full(m, -1, dtype=np.int64)
    i, j = m, n
    while i > 0:
        col = j - i - lo
        here = table[i, col]
        if j > 0 and 0 <= col < width and here == table[i - 1, col] + (items[i - 1] != key[j - 1]):
            mapping[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif j == 0 or (col + 1 < width and here == table[i - 1, col + 1] + 1):
            i -= 1
        else:
            j -= 1
    return mapping


def match_spans(text: str, item_keys: list[str]) -> list[tuple[int, int] | None]:
    """Character spans in `text` of each item key (see `match_key`), in order; None where none of its
    letters aligned to the text (an extra item)."""
    key, where = match_key(text)
    mapping = align_chars("".join(item_keys), key)
    out: list[tuple[int, int] | None] = []
    start = 0
    for item in item_keys:
        hit = mapping[start : start + len(item)]
        hit = hit[hit >= 0]
        out.append((where[hit.min()], where[hit.max()] + 1) if hit.size else None)
        start += len(item)
    return out

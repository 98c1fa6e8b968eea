"""Units of a transcript: words (Latin, Hangul) or characters (Chinese, Japanese); how they join, where
sentences end, and how long each takes to say.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from asr_server.text.line_breaking import NO_LINE_END, NO_LINE_START, SENTENCE_END, breaks_anywhere, is_cjk

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

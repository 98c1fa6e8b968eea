"""Text work of translation, on user input and LLM answers: joining lines, sentences, batches, reassembly.

Pure functions; the translator runs them in a worker thread, since the input can be megabytes of text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from asr_server.text.line_breaking import breaks_anywhere


def join_lines(lines: Iterable[str]) -> str:
    """Join lines into one: a space between words, nothing between two Chinese/Japanese characters
    (Korean separates words with spaces, so Hangul gets one)."""
    out = ""
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if out and not (breaks_anywhere(out[-1]) and breaks_anywhere(line[0])):
            out += " "
        out += line
    return out


SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？；])(?![”’」』）\"'])\s*|(?<=[。！？；][”’」』）\"'])\s*")


def split_sentences(paragraph: str, max_chars: int) -> list[str]:
    """Sentences of a paragraph, each at most `max_chars` (long ones cut at spaces, else hard)."""
    pieces: list[str] = []
    for sentence in filter(None, (s.strip() for s in SENTENCE_BREAK.split(paragraph))):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 1, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    return pieces


def batch_ranges(items: Sequence[tuple[int, str]], size: int, max_chars: int | None) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges of at most `size` items and (when given) about `max_chars`."""
    ranges: list[tuple[int, int]] = []
    start = chars = 0
    for k, (_, text) in enumerate(items):
        if k > start and (k - start >= size or (max_chars is not None and chars + len(text) > max_chars)):
            ranges.append((start, k))
            start, chars = k, 0
        chars += len(text)
    if start < len(items):
        ranges.append((start, len(items)))
    return ranges


def rebuild_text(chunks: list[str], paragraphs: list[list[str]], done: dict[int, str]) -> str:
    """The transcript again, each sentence translated where the LLM gave one, paragraphs as they were."""
    out, ident = [], 1
    for k, sentences in enumerate(paragraphs):
        translated = [done.get(ident + j, s) for j, s in enumerate(sentences)]
        ident += len(sentences)
        out.append(join_lines(translated))
        if 2 * k + 1 < len(chunks):
            out.append("\n" * chunks[2 * k + 1].count("\n"))
    return "".join(out)

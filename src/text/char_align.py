"""Aligning an aligner's bare words back onto the transcript, character by character (banded Levenshtein)."""

from __future__ import annotations

import numpy as np

from asr_server.text.units import match_key

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

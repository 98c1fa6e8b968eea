"""qwen-asr's forced-aligner text processing, ported so the vLLM engine (transformers 5, no qwen_asr) gives the
same words and times as `Qwen3ForcedAligner.align()`: the word splitting per language, the aligner's prompt, and
the repair of out-of-order timestamps. tests/test_aligner_text.py checks each function against qwen-asr's own.
"""

from __future__ import annotations

import bisect
import struct
import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from asr_server.engines.base import AlignedUnit
from asr_server.errors import EngineUnavailable

AUDIO_PLACEHOLDER = "<|audio_start|><|audio_pad|><|audio_end|>"
TIMESTAMP = "<timestamp>"
KOREAN_DICT = Path(__file__).parent / "assets" / "korean_dict_jieba.dict"
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF),
)  # fmt: skip


def _kept(ch: str) -> bool:
    return ch == "'" or unicodedata.category(ch)[0] in "LN"


def _clean(token: str) -> str:
    return "".join(ch for ch in token if _kept(ch))


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _split_cjk(segment: str) -> list[str]:
    """Each CJK character alone; runs of anything else together."""
    out: list[str] = []
    run = ""
    for ch in segment:
        if _is_cjk(ch):
            if run:
                out.append(run)
                run = ""
            out.append(ch)
        else:
            run += ch
    return [*out, run] if run else out


@cache
def _korean_tokenizer() -> Any:
    try:
        from soynlp.tokenizer import LTokenizer
    except ImportError as exc:
        raise EngineUnavailable(
            "aligning Korean needs soynlp: pip install 'qwen3-asr-server[aligner-text]'", code="missing_dependency"
        ) from exc
    words = (line.split()[0] for line in KOREAN_DICT.read_text(encoding="utf-8").splitlines() if line.strip())
    return LTokenizer(scores=dict.fromkeys(words, 1.0))


def _japanese_words(text: str) -> list[str]:
    try:
        import nagisa
    except ImportError as exc:
        raise EngineUnavailable(
            "aligning Japanese needs nagisa: pip install 'qwen3-asr-server[aligner-text]'", code="missing_dependency"
        ) from exc
    return list(nagisa.tagging(text).words)


def split_words(text: str, language: str) -> list[str]:
    """The units the aligner times: nagisa words (Japanese), soynlp words (Korean), else whitespace words cut at
    every CJK character; characters other than letters, digits and apostrophes are dropped."""
    language = language.lower()
    if language == "japanese":
        return [w for w in map(_clean, _japanese_words(text)) if w]
    if language == "korean":
        return [w for w in map(_clean, _korean_tokenizer().tokenize(text)) if w]
    return [piece for segment in text.split() if (cleaned := _clean(segment)) for piece in _split_cjk(cleaned)]


def aligner_prompt(words: list[str]) -> str:
    """The aligner's input text: the audio, then each word followed by its start and end timestamp tokens."""
    return AUDIO_PLACEHOLDER + (TIMESTAMP * 2).join(words) + TIMESTAMP * 2


def _float32(value: float) -> float:
    """`value` rounded to float32: align() multiplies int64 bins by the segment time in a float32 tensor."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _longest_non_decreasing(values: list[float]) -> list[bool]:
    """The indices of the longest non-decreasing subsequence that qwen-asr's O(n²) search picks, in O(n log n).

    Its `dp[i]` (the longest such run ending at i) is patience sorting's level of i; its parent is the first
    j < i one level down with `values[j] <= values[i]`. Each level's members, in index order, strictly decrease
    in value (else the later would be a level higher), so that j starts the level's suffix of values <= values[i].
    Its end is the first index of the highest level. A 1 h transcript then takes milliseconds, not seconds."""
    tails: list[float] = []  # the last (smallest) value on each level
    levels: list[list[int]] = []  # each level's indices, in order
    negated: list[list[float]] = []  # each level's values negated, so increasing, for bisect
    parent = [-1] * len(values)
    for i, value in enumerate(values):
        level = bisect.bisect_right(tails, value)
        if level:
            below = level - 1
            parent[i] = levels[below][bisect.bisect_left(negated[below], -value)]
        if level == len(tails):
            tails.append(value)
            levels.append([])
            negated.append([])
        tails[level] = value
        levels[level].append(i)
        negated[level].append(-value)
    keep = [False] * len(values)
    index = levels[-1][0]
    while index != -1:
        keep[index] = True
        index = parent[index]
    return keep


def repair_timestamps(values: Sequence[float]) -> list[int]:
    """qwen-asr's `fix_timestamp`: times outside the longest non-decreasing run are replaced, a run of one or two
    by the nearer good neighbour (the left one on a tie), longer runs by a linear ramp between their good
    neighbours (or the one there is), then truncated to ints. Empty in, empty out (qwen-asr's raises)."""
    result = list(values)
    if not result:
        return []
    normal = _longest_non_decreasing(result)
    n, i = len(result), 0
    while i < n:
        if normal[i]:
            i += 1
            continue
        j = i
        while j < n and not normal[j]:
            j += 1
        left = next((result[k] for k in range(i - 1, -1, -1) if normal[k]), None)
        right = next((result[k] for k in range(j, n) if normal[k]), None)
        for k in range(i, j):
            if left is None or right is None:
                result[k] = right if left is None else left  # type: ignore[assignment]
            elif j - i <= 2:
                result[k] = left if (k - (i - 1)) <= (j - k) else right
            else:
                result[k] = left + (right - left) / (j - i + 1) * (k - i + 1)
        i = j
    return [int(v) for v in result]


def timed_words(words: list[str], class_ids: Sequence[int], segment_ms: float) -> list[AlignedUnit]:
    """Words with their times in seconds from the aligner's argmax classes at every `<timestamp>` token of
    `aligner_prompt(words)` (two per word, in order), as align() computes them: bins × segment_ms in float32,
    repaired, each word's pair read off, ms → s rounded to 3 decimals."""
    if len(class_ids) < 2 * len(words):
        raise ValueError(f"{len(words)} words need {2 * len(words)} timestamp classes, got {len(class_ids)}")
    step = _float32(segment_ms)
    times = repair_timestamps([_float32(_float32(float(c)) * step) for c in class_ids])
    return [
        AlignedUnit(text=word, start=round(times[2 * i] / 1000.0, 3), end=round(times[2 * i + 1] / 1000.0, 3))
        for i, word in enumerate(words)
    ]

"""engines/aligner_text.py against qwen-asr's own aligner processor: the same words, prompt and repaired times.

The vLLM engine cannot import qwen-asr, so it runs the port; these tests run where qwen-asr can (the main venv)
and compare the two on generated input, so a drift in either shows up as a failure here.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_server.engines import aligner_text
from asr_server.engines.aligner_text import aligner_prompt, repair_timestamps, split_words, timed_words
from asr_server.errors import EngineUnavailable

qwen_aligner = pytest.importorskip("qwen_asr.inference.qwen3_forced_aligner")
torch = pytest.importorskip("torch")

# Letters, digits, apostrophes (kept), punctuation and symbols (dropped), CJK of every range the splitter knows
# and just outside them, kana and hangul (letters, not CJK), fullwidth forms, emoji, combining marks, and the
# odd whitespace that str.split() does and does not cut at.
SPECIAL = [
    *"abcXYZ019'’-.,!?;:_\"()", *"éüßçñ", *"你好世界中文", *"，。！？「」", *"ひらカナ한국",
    "Ａ", "１", "٣", "ـ", "Ⅻ", "½", "😀", "👍", "\U0001f3fd", "\u0301", "\u200b",
    "\u00a0", "\u3000", "\u2028", "\x1c", "\t", "\n",
    " ", "\u3400", "\u4dbf", "\u9fff", "\ua000", "\U00020000", "\U0002a6df", "\U0002b740", "\U0002ceaf", "\U0002ceb0",
    "\uf900", "\ufaff", "\U0002f800", "\U0002cea1", "\U0002b81d",
]  # fmt: skip
CHARACTER = st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=("Cs",)))
# Long enough for runs where each kind of character meets each other kind (hypothesis's texts are short).
TEXT = st.one_of(
    st.text(CHARACTER, max_size=80),
    st.lists(st.text(st.sampled_from(SPECIAL), min_size=1, max_size=6), min_size=8, max_size=30).map("".join),
)
SPACE_LANGUAGES = ["English", "Chinese", "french", "GERMAN", "Cantonese", "Arabic", "Thai", "Russian", ""]

JAPANESE = [
    "今日はいい天気ですね。東京へ行きます",
    "私の名前はJohnです。2024年に3回、大阪へ行きました！",
    "「すみません」と彼は言った…ｶﾀｶﾅもＡＢＣも",
    "   ",
]
KOREAN = [
    "안녕하세요, 오늘 날씨가 좋네요!",
    "저는 서울에서 2024년에 태어났어요. 그리고 OpenAI의 GPT-4를 써요",
    "대한민국은 민주공화국이다",
    "한국어와 中文 그리고 English's mix",
    "",
]


@pytest.fixture(scope="module")
def reference() -> Any:
    return qwen_aligner.Qwen3ForceAlignProcessor()


def _align_tail(reference: Any, words: list[str], class_ids: list[int], segment_ms: float) -> list[tuple]:
    """What Qwen3ForcedAligner.align() does after the forward pass, on the same tensors."""
    timestamp_ms = (torch.tensor(class_ids, dtype=torch.int64) * segment_ms).to("cpu").numpy()
    out = reference.parse_timestamp(words, timestamp_ms)
    return [(it["text"], round(it["start_time"] / 1000.0, 3), round(it["end_time"] / 1000.0, 3)) for it in out]


@settings(max_examples=400, deadline=None)
@given(text=TEXT, language=st.sampled_from(SPACE_LANGUAGES))
def test_words_and_prompt_are_qwen_asrs(reference: Any, text: str, language: str) -> None:
    words, prompt = reference.encode_timestamp(text, language)
    assert split_words(text, language) == words
    assert aligner_prompt(words) == prompt


@pytest.mark.parametrize(
    ("text", "language", "splitter"),
    [(t, "japanese", "nagisa") for t in JAPANESE] + [(t, "Korean", "soynlp") for t in KOREAN],
)
def test_japanese_and_korean_words_are_qwen_asrs(reference: Any, text: str, language: str, splitter: str) -> None:
    pytest.importorskip(splitter)
    words, prompt = reference.encode_timestamp(text, language.capitalize())
    assert split_words(text, language) == words  # any letter case, as qwen-asr
    assert aligner_prompt(words) == prompt


def test_hand_checked_words_and_prompt() -> None:
    assert split_words("Hello, world! 你好", "English") == ["Hello", "world", "你", "好"]
    assert split_words("I'm 25岁了。 don’t", "Chinese") == ["I'm", "25", "岁", "了", "dont"]
    assert split_words(" ... !! ", "English") == []
    assert aligner_prompt(["a", "b"]) == (
        "<|audio_start|><|audio_pad|><|audio_end|>a<timestamp><timestamp>b<timestamp><timestamp>"
    )
    assert aligner_prompt([]) == "<|audio_start|><|audio_pad|><|audio_end|><timestamp><timestamp>"


@pytest.mark.parametrize(("module", "language"), [("nagisa", "Japanese"), ("soynlp.tokenizer", "Korean")])
def test_missing_word_splitter_names_the_package(monkeypatch: pytest.MonkeyPatch, module: str, language: str) -> None:
    aligner_text._korean_tokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    try:
        with pytest.raises(EngineUnavailable, match=module.split(".")[0]) as caught:
            split_words("テキスト 텍스트", language)
        assert caught.value.code == "missing_dependency"
        assert split_words("still fine", "English") == ["still", "fine"]
    finally:
        aligner_text._korean_tokenizer.cache_clear()


@st.composite
def timestamp_bins(draw: st.DrawFn) -> list[int]:
    """A non-decreasing run of bins with runs of 1, 2 or 3+ out-of-order values spliced in, at the start, in
    the middle or at the end, as a misaligned word produces; sometimes just any list."""
    if draw(st.booleans()):
        return draw(st.lists(st.integers(0, 12), min_size=1, max_size=40))
    bins = sorted(draw(st.lists(st.integers(0, 400), min_size=1, max_size=40)))
    for _ in range(draw(st.integers(1, 4))):
        length = draw(st.sampled_from([1, 2, 3, 4, 7]))
        at = draw(st.sampled_from([0, len(bins), draw(st.integers(0, len(bins)))]))
        bins[at:at] = draw(st.lists(st.integers(0, 500), min_size=length, max_size=length))
    return bins


@settings(max_examples=600, deadline=None)
@given(bins=timestamp_bins(), segment_ms=st.sampled_from([80.0, 40.0, 33.3]))
def test_timestamp_repair_is_qwen_asrs(reference: Any, bins: list[int], segment_ms: float) -> None:
    as_ints = np.array(bins, dtype=np.int64) * 80
    assert repair_timestamps(as_ints.tolist()) == reference.fix_timestamp(as_ints)
    as_float32 = (torch.tensor(bins) * segment_ms).numpy()  # what align() hands fix_timestamp
    assert repair_timestamps(as_float32.tolist()) == reference.fix_timestamp(as_float32)


def test_timestamp_repair_scales(reference: Any) -> None:
    rng = np.random.default_rng(0)
    bins = np.sort(rng.integers(0, 5000, 600)) * 80
    bins[rng.integers(0, 600, 60)] = rng.integers(0, 5000 * 80, 60)
    assert repair_timestamps(bins.tolist()) == reference.fix_timestamp(bins)
    assert len(repair_timestamps(list(range(200_000, 0, -1)))) == 200_000  # O(n log n): qwen-asr's would take hours


def test_hand_checked_repairs() -> None:
    assert repair_timestamps([0, 80, 40, 160]) == [0, 80, 80, 160]  # one anomaly (80): the nearer neighbour
    assert repair_timestamps([0, 900, 800, 700, 1000]) == [0, 900, 900, 1000, 1000]  # two: each to the nearer
    assert repair_timestamps([0, 500, 400, 300, 200, 600]) == [0, 500, 525, 550, 575, 600]  # three: a ramp
    assert repair_timestamps([9, 9, 1, 2, 3, 4]) == [1, 1, 1, 2, 3, 4]  # leading: the right neighbour
    assert repair_timestamps([1, 2, 3, 0, 0]) == [1, 2, 3, 3, 3]  # trailing: the left neighbour
    assert repair_timestamps([12.9, 5.5]) == [12, 12]  # truncated, as int() does
    assert repair_timestamps([]) == []


@settings(max_examples=300, deadline=None)
@given(
    bins=timestamp_bins().filter(lambda v: len(v) >= 2),
    segment_ms=st.sampled_from([80.0, 40.0, 33.3, 0.7, 12.7]),
    extra=st.booleans(),
)
def test_timed_words_are_align_s(reference: Any, bins: list[int], segment_ms: float, extra: bool) -> None:
    words = [f"w{i}" for i in range(len(bins) // 2 - (1 if extra and len(bins) >= 4 else 0))]
    got = timed_words(words, bins, segment_ms)
    assert [(u.text, u.start, u.end) for u in got] == _align_tail(reference, words, bins, segment_ms)


def test_hand_checked_timed_words(reference: Any) -> None:
    units = timed_words(["hello", "world"], [0, 6, 5, 13], 80.0)  # 5 after 6: the nearer neighbour, 6
    assert [(u.text, u.start, u.end) for u in units] == [("hello", 0.0, 0.48), ("world", 0.48, 1.04)]
    assert timed_words(["x"], [0, 30], 33.3)[0].end == 0.999  # 30 × 33.3 in float32, as align(); 998.99… in float64
    assert timed_words([], [3, 4], 80.0) == []  # an empty transcript still has its two timestamp tokens
    with pytest.raises(ValueError, match="2 words need 4"):
        timed_words(["a", "b"], [1, 2, 3], 80.0)

"""Translator tests against a real OpenAI-compatible HTTP stub (tests/llm_stub.py) on a loopback port.

Everything goes through the real `openai` client inside Translator; the stub's model name picks its
behaviour, and the stub records every request it really received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import srt

from asr_server.text.cues import Cue, parse_srt, to_srt
from asr_server.text.line_breaking import display_width
from asr_server.translator import (
    BadAnswer,
    CueTranslation,
    TranslationTimeout,
    TranslationUnavailable,
    Translator,
    TranslatorConfig,
    TranslatorNotConfigured,
    UnsupportedLanguageError,
    is_same_language,
    normalize_target_language,
    parse_translations,
)

from llm_stub import POISON, SLOW_S, LLMStub, fake_translate, free_port

MakeTranslator = Callable[..., Translator]

SOURCE_SRT = """\
7
00:00:00,000 --> 00:00:01,234
Hello there.

8
01:02:03,456 --> 01:02:05,001
How are
you today?

12
01:02:05,001 --> 01:02:07,999
The weather is nice.

13
01:02:08,000 --> 01:02:09,500
I like green tea.

20
01:03:00,010 --> 01:03:01,020
See you later.

21
01:03:01,020 --> 01:03:02,000
Good night, friend.

22
10:00:00,000 --> 10:00:00,001
Thank you!
"""


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMStub]:
    stub = LLMStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def stub(llm: LLMStub) -> LLMStub:
    llm.reset()
    return llm


@pytest.fixture
async def make_translator(stub: LLMStub) -> AsyncIterator[MakeTranslator]:
    made: list[Translator] = []
    base = TranslatorConfig(
        base_url=stub.base_url,
        api_key="test-key",
        model="correct",
        timeout_s=2.0,
        max_retries=2,
        backoff_s=0.01,
        max_backoff_s=0.1,
        batch_size=3,
        max_concurrency=4,
        context_cues=2,
        max_line_width=20,
        max_lines=2,
    )

    def make(model: str = "correct", **overrides: Any) -> Translator:
        translator = Translator(replace(base, model=model, **overrides))
        made.append(translator)
        return translator

    yield make
    for translator in made:
        await translator.aclose()


def source_cues() -> list[Cue]:
    return parse_srt(SOURCE_SRT)


def timing_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "-->" in line]


def squash(text: str) -> str:
    return "".join(text.split())


def assert_structure_kept(source: list[Cue], result: CueTranslation) -> None:
    """Same cues, indexes and timings byte for byte, checked with our writer and the `srt` package."""
    assert len(result.cues) == len(source)
    assert [c.index for c in result.cues] == [c.index for c in source]
    assert [(c.start, c.end) for c in result.cues] == [(c.start, c.end) for c in source]
    out_srt = to_srt(result.cues)
    assert timing_lines(out_srt) == timing_lines(SOURCE_SRT)
    parsed_out = list(srt.parse(out_srt))
    parsed_in = list(srt.parse(SOURCE_SRT))
    assert [(s.index, s.start, s.end) for s in parsed_out] == [(s.index, s.start, s.end) for s in parsed_in]


def assert_translated(source: Cue, cue: Cue, target: str = "zh") -> None:
    joined_source = " ".join(source.text.split())
    assert squash(cue.text) == squash(fake_translate(joined_source, target))


# ---------------------------------------------------------------------------------------------- languages


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("en", "en"),
        ("English", "en"),
        ("english", "en"),
        ("en-US", "en"),
        ("en_GB", "en"),
        ("zh", "zh"),
        ("Chinese", "zh"),
        ("zh-CN", "zh"),
        ("zh-Hans", "zh"),
        ("zh-TW", "zh"),
        ("zh-Hant", "zh"),
        ("  ZH-hans-CN ", "zh"),
        ("Mandarin", "zh"),
    ],
)
def test_normalize_target_language_accepts(value: str, expected: str) -> None:
    assert normalize_target_language(value) == expected


@pytest.mark.parametrize("value", ["fr", "French", "ja", "yue", "Cantonese", "", "auto", "e"])
def test_normalize_target_language_rejects(value: str) -> None:
    with pytest.raises(UnsupportedLanguageError) as info:
        normalize_target_language(value)
    assert isinstance(info.value, ValueError)
    assert "'en'" in str(info.value) and "'zh'" in str(info.value)


@pytest.mark.parametrize(
    ("source", "target", "same"),
    [
        ("English", "en", True),
        ("en-GB", "English", True),
        ("Chinese", "zh", True),
        ("zh-CN", "zh-Hans", True),
        ("zh", "zh-TW", True),  # target is always Simplified; Mandarin source is already that
        ("Cantonese", "zh", False),
        ("yue", "zh", False),
        ("zh-TW", "zh", False),
        ("zh-Hant", "zh", False),
        ("Japanese", "en", False),
        ("Chinese", "en", False),
        (None, "en", False),
        ("", "zh", False),
    ],
)
def test_is_same_language(source: str | None, target: str, same: bool) -> None:
    assert is_same_language(source, target) is same


# ------------------------------------------------------------------------------------------ answer parser


def test_parse_translations_shapes() -> None:
    assert parse_translations('{"translations": [{"id": 1, "text": " a "}, {"id": "2", "text": "b"}]}', [1, 2]) == {
        1: "a",
        2: "b",
    }
    assert parse_translations('[{"id": 3, "text": "c"}]', [3]) == {3: "c"}
    assert parse_translations('Result: {"result": {"4": "d"}} done', [4]) == {4: "d"}
    assert parse_translations("```\n5) e\n6) f\n```", [5, 6]) == {5: "e", 6: "f"}
    assert parse_translations("<think>{}</think>[7] g", [7]) == {7: "g"}


@pytest.mark.parametrize(
    "content",
    [
        '{"translations": [{"id": 1, "text": "a"}]}',  # id 2 missing
        '{"translations": [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}, {"id": 3, "text": "c"}]}',
        '{"translations": [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}, {"id": 2, "text": "c"}]}',
        '{"translations": [{"id": 1, "text": "a"}, {"id": 2, "text": ""}]}',
        '{"translations": [{"id": 1, "text": "a"}, {"id": 2, "te',
        "I cannot help with that.",
        "",
    ],
)
def test_parse_translations_rejects(content: str) -> None:
    with pytest.raises(BadAnswer):
        parse_translations(content, [1, 2])


# ------------------------------------------------------------------------------------------ well-behaved


async def test_cues_round_trip_ids_and_keep_structure(stub: LLMStub, make_translator: MakeTranslator) -> None:
    cues = source_cues()
    result = await make_translator().translate_cues(cues, "zh", source="English")

    assert result.untranslated == []
    assert_structure_kept(cues, result)
    for src, out in zip(cues, result.cues, strict=True):
        assert_translated(src, out)
        lines = out.text.split("\n")
        assert len(lines) <= 2
        assert all(display_width(line) <= 20 for line in lines)
    # Ids are positions, sent once each, in batches of 3, with up to 2 preceding cues as context.
    assert stub.count() == 3
    assert sorted(i for r in stub.requests for i in r.ids) == list(range(1, 8))
    second = next(r for r in stub.requests if r.ids[0] == 4)
    assert second.context == ["How are you today?", "The weather is nice."]
    assert all(r.authorization == "Bearer test-key" for r in stub.requests)
    assert all("Simplified Chinese" in r.system and "JSON" in r.system for r in stub.requests)


async def test_multiline_translation_is_relaid_out(stub: LLMStub, make_translator: MakeTranslator) -> None:
    cues = [Cue(1, 0.0, 2.0, "Wherever you go\nand whatever you do,\nI will be right here waiting.")]
    result = await make_translator(max_line_width=30, max_lines=3).translate_cues(cues, "zh")
    assert_translated(cues[0], result.cues[0])
    assert all(display_width(line) <= 30 for line in result.cues[0].text.split("\n"))
    assert stub.requests[0].user.count("Wherever you go and whatever you do, I will") == 1


@pytest.mark.parametrize("model", ["fenced", "chatty", "numbered", "think"])
async def test_tolerated_answer_formats(stub: LLMStub, make_translator: MakeTranslator, model: str) -> None:
    cues = source_cues()
    result = await make_translator(model).translate_cues(cues, "zh")
    assert result.untranslated == []
    assert_structure_kept(cues, result)
    for src, out in zip(cues, result.cues, strict=True):
        assert_translated(src, out)
    assert stub.count() == 3  # no retries were needed


async def test_translate_to_english(stub: LLMStub, make_translator: MakeTranslator) -> None:
    cues = [Cue(1, 0.5, 1.5, "你好。"), Cue(2, 1.5, 2.5, "今天\n天气很好！")]
    result = await make_translator(max_line_width=42).translate_cues(cues, "English", source="Chinese")
    assert [c.text for c in result.cues] == ["(en) 你好。", "(en) 今天天气很好！"]
    assert "into English" in stub.requests[0].system and "from Chinese" in stub.requests[0].system


async def test_source_line_breaks_are_joined_per_script(stub: LLMStub, make_translator: MakeTranslator) -> None:
    cues = [
        Cue(1, 0.0, 1.0, "今天\n天气很好。"),
        Cue(2, 1.0, 2.0, "안녕하세요\n반갑습니다"),
        Cue(3, 2.0, 3.0, "a\nb"),
    ]
    await make_translator().translate_cues(cues, "en")
    assert "今天天气很好。" in stub.requests[0].user
    assert "안녕하세요 반갑습니다" in stub.requests[0].user
    assert '"a b"' in stub.requests[0].user


async def test_empty_cues_are_kept_and_not_sent(stub: LLMStub, make_translator: MakeTranslator) -> None:
    cues = [Cue(1, 0.0, 1.0, "Hello."), Cue(2, 1.0, 2.0, "  "), Cue(3, 2.0, 3.0, "Bye.")]
    result = await make_translator().translate_cues(cues, "zh")
    assert result.cues[1] == cues[1] and result.untranslated == []
    assert stub.requests[0].ids == [1, 3]
    assert await make_translator().translate_cues([], "zh") == CueTranslation(cues=[], untranslated=[])


async def test_translate_text_batches_at_sentence_boundaries(stub: LLMStub, make_translator: MakeTranslator) -> None:
    paragraph_one = "Hello there. How are you today? The weather is nice."
    paragraph_two = "I like green tea! See you later."
    text = f"{paragraph_one}\n\n{paragraph_two}"
    out = await make_translator(text_batch_chars=40, batch_size=10).translate_text(text, "zh", source="en")

    sentences_one = ["Hello there.", "How are you today?", "The weather is nice."]
    sentences_two = ["I like green tea!", "See you later."]
    expected_one = "".join(fake_translate(s, "zh") for s in sentences_one)
    expected_two = "".join(fake_translate(s, "zh") for s in sentences_two)
    assert out == f"{expected_one}\n\n{expected_two}"
    assert sorted(r.ids for r in stub.requests) == [[1, 2], [3, 4], [5]]  # about 40 characters each
    assert sorted(i for r in stub.requests for i in r.ids) == [1, 2, 3, 4, 5]
    assert all("sentence of a transcript" in r.system for r in stub.requests)


async def test_translate_text_splits_chinese_sentences(stub: LLMStub, make_translator: MakeTranslator) -> None:
    out = await make_translator().translate_text("你好。今天天气很好！\n再见。", "en", source="zh")
    assert out == "(en) 你好。 (en) 今天天气很好！\n(en) 再见。"
    assert stub.requests[0].ids == [1, 2, 3]


async def test_concurrency_is_bounded(stub: LLMStub, make_translator: MakeTranslator) -> None:
    cues = [Cue(k, k, k + 1, f"Line number {k}.") for k in range(1, 13)]
    result = await make_translator("sluggish", batch_size=2, max_concurrency=2).translate_cues(cues, "zh")
    assert result.untranslated == []
    assert stub.count() == 6
    assert stub.max_in_flight == 2


# --------------------------------------------------------------------------------------------- misbehaving


async def test_missing_cue_is_retried_smaller_then_kept_untranslated(
    stub: LLMStub, make_translator: MakeTranslator
) -> None:
    cues = source_cues()
    poisoned = replace(cues[4], text=f"See you {POISON}.")
    cues[4] = poisoned
    result = await make_translator("missing").translate_cues(cues, "zh")

    assert result.untranslated == [poisoned.index]
    assert result.cues[4] == poisoned  # source text, untouched
    for k, (src, out) in enumerate(zip(cues, result.cues, strict=True)):
        if k != 4:
            assert_translated(src, out)
    # Batches [1-3] [4-6] [7]; [4-6] fails, so strict halves [4] (ok) and [5,6] (fails), then strict
    # singles [5] (fails again: no further try) and [6].
    sent = [r.ids for r in stub.requests]
    assert sorted(sent) == [[1, 2, 3], [4], [4, 5, 6], [5], [5, 6], [6], [7]]
    strict = [r.ids for r in stub.requests if "previous answer was rejected" in r.system]
    assert sorted(strict) == [[4], [5], [5, 6], [6]]


async def test_merged_cues_are_split_apart(stub: LLMStub, make_translator: MakeTranslator) -> None:
    cues = source_cues()
    cues[1] = replace(cues[1], text=f"How are {POISON}?")
    result = await make_translator("merged").translate_cues(cues, "zh")
    assert result.untranslated == []
    assert_structure_kept(cues, result)
    for src, out in zip(cues, result.cues, strict=True):
        assert_translated(src, out)  # no cue carries its neighbour's text
    assert stub.count() > 3


async def test_invalid_json_everywhere_keeps_source(stub: LLMStub, make_translator: MakeTranslator) -> None:
    cues = source_cues()[:4]
    result = await make_translator("invalid-json", batch_size=4).translate_cues(cues, "zh")
    assert result.untranslated == [c.index for c in cues]
    assert result.cues == cues
    # [1-4] -> [1,2] [3,4] -> [1] [2] [3] [4]: every single cue has had a strict attempt.
    assert stub.count() == 7
    assert sum("previous answer was rejected" in r.system for r in stub.requests) == 6


async def test_invalid_json_once_recovers(stub: LLMStub, make_translator: MakeTranslator) -> None:
    cues = source_cues()[:4]
    result = await make_translator("invalid-once", batch_size=4).translate_cues(cues, "zh")
    assert result.untranslated == []
    assert stub.count() == 3
    for src, out in zip(cues, result.cues, strict=True):
        assert_translated(src, out)


async def test_rate_limit_then_success(stub: LLMStub, make_translator: MakeTranslator) -> None:
    result = await make_translator("429-then-ok").translate_text("Hello there.", "zh")
    assert result == fake_translate("Hello there.", "zh")
    assert stub.count() == 2


async def test_server_error_is_unavailable_after_retries(stub: LLMStub, make_translator: MakeTranslator) -> None:
    with pytest.raises(TranslationUnavailable, match="HTTP 500"):
        await make_translator("500", max_retries=3).translate_cues(source_cues()[:2], "zh")
    assert stub.count() == 4


async def test_client_error_is_not_retried(stub: LLMStub, make_translator: MakeTranslator) -> None:
    with pytest.raises(TranslationUnavailable, match="HTTP 401"):
        await make_translator("401").translate_text("Hello.", "zh")
    assert stub.count() == 1


async def test_connection_refused_is_unavailable(make_translator: MakeTranslator) -> None:
    translator = make_translator(base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(TranslationUnavailable, match="cannot reach"):
        await translator.translate_cues(source_cues(), "zh")


async def test_slow_model_hits_request_timeout(stub: LLMStub, make_translator: MakeTranslator) -> None:
    started = time.monotonic()
    with pytest.raises(TranslationTimeout):
        await make_translator("slow", timeout_s=0.3, max_retries=1).translate_text("Hello.", "zh")
    assert time.monotonic() - started < SLOW_S
    assert stub.count() == 2


async def test_slow_model_hits_overall_deadline(make_translator: MakeTranslator) -> None:
    translator = make_translator("slow", timeout_s=10.0)
    started = time.monotonic()
    with pytest.raises(TranslationTimeout, match=r"within 0\.3 s"):
        await translator.translate_cues(source_cues(), "zh", deadline_s=0.3)
    assert time.monotonic() - started < 1.5


# ---------------------------------------------------------------------------------- configuration, no-ops


async def test_not_configured() -> None:
    translator = Translator(TranslatorConfig(model="m"))
    assert not translator.configured
    with pytest.raises(TranslatorNotConfigured, match=r"OPENAI_BASE_URL.*TRANSLATE_MODEL"):
        await translator.translate_cues(source_cues(), "zh")
    with pytest.raises(TranslatorNotConfigured):
        await Translator(TranslatorConfig(base_url="http://127.0.0.1:9/v1")).translate_text("Hi.", "en")
    # Same language needs no LLM, so it works unconfigured too.
    assert await translator.translate_text("Hi.", "en", source="English") == "Hi."
    await translator.aclose()


async def test_same_language_makes_no_call(stub: LLMStub, make_translator: MakeTranslator) -> None:
    translator = make_translator()
    cues = source_cues()
    result = await translator.translate_cues(cues, "en-US", source="English")
    assert result.cues == cues and result.untranslated == []
    assert await translator.translate_text("你好。", "zh-Hans", source="Chinese") == "你好。"
    assert stub.count() == 0


async def test_unsupported_target_makes_no_call(stub: LLMStub, make_translator: MakeTranslator) -> None:
    with pytest.raises(UnsupportedLanguageError):
        await make_translator().translate_cues(source_cues(), "fr")
    assert stub.count() == 0


async def test_closed_translator_refuses(make_translator: MakeTranslator) -> None:
    translator = make_translator()
    await translator.aclose()
    await translator.aclose()  # idempotent
    with pytest.raises(RuntimeError):
        await translator.translate_text("Hello.", "zh")


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TranslatorConfig(batch_size=0)
    with pytest.raises(ValueError):
        TranslatorConfig(timeout_s=0)
    assert not TranslatorConfig(base_url="http://x/v1").configured
    assert TranslatorConfig(base_url="http://x/v1", model="m").configured


async def test_one_client_serves_many_calls(stub: LLMStub, make_translator: MakeTranslator) -> None:
    translator = make_translator()
    results = await asyncio.gather(*(translator.translate_text(f"Line {k}.", "zh") for k in range(5)))
    assert results == [fake_translate(f"Line {k}.", "zh") for k in range(5)]
    assert stub.count() == 5

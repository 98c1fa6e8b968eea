"""Target and source language tags for translation: only English and Simplified Chinese are targets."""

from __future__ import annotations

import re
from types import MappingProxyType

SUPPORTED_TARGETS = ("en", "zh")
TARGET_NAMES = MappingProxyType({"en": "English", "zh": "Simplified Chinese"})

_ENGLISH = frozenset({"en", "eng", "english"})
_MANDARIN = frozenset(
    {
        "zh", "zho", "chi", "cmn", "chinese", "mandarin", "simplified chinese", "chinese simplified",
        "中文", "汉语", "普通话", "简体中文",
    }
)  # fmt: skip
_TRADITIONAL = frozenset({"traditional chinese", "chinese traditional", "繁體中文", "繁体中文"})
_CANTONESE = frozenset({"yue", "cantonese", "粤语", "粵語", "广东话", "廣東話"})
_TRADITIONAL_SUBTAGS = frozenset({"hant", "tw", "hk", "mo"})


class UnsupportedLanguageError(ValueError):
    """The requested target language is neither English nor Chinese."""


def _language_key(value: str) -> str:
    """Classify a language code or name: "en", "zh" (Mandarin in Simplified script), "zh-hant", "yue",
    or the cleaned value itself for anything else."""
    key = " ".join(re.sub(r"[()]", " ", value.strip().lower().replace("_", "-")).split())
    if key in _ENGLISH or key.startswith("en-"):
        return "en"
    if key in _CANTONESE or key.startswith(("yue-", "zh-yue")):
        return "yue"
    if key in _TRADITIONAL:
        return "zh-hant"
    if key in _MANDARIN:
        return "zh"
    if key.startswith(("zh-", "cmn-")):
        subtags = set(key.split("-")[1:])
        # The script subtag wins over the region: zh-Hans-HK is Simplified text.
        if "hans" not in subtags and subtags & _TRADITIONAL_SUBTAGS:
            return "zh-hant"
        return "zh"
    return key


def normalize_target_language(value: str) -> str:
    """Map a target such as "English", "en-US", "Chinese", "zh-Hans" or "zh-TW" to "en" or "zh".

    Chinese output is always Simplified Chinese, whatever regional tag asked for it. Anything else
    raises `UnsupportedLanguageError` naming the supported targets.
    """
    key = _language_key(value) if isinstance(value, str) else ""
    if key == "en":
        return "en"
    if key in ("zh", "zh-hant"):
        return "zh"
    raise UnsupportedLanguageError(
        f"unsupported target language {value!r}: supported targets are 'en' (English) "
        "and 'zh' (Simplified Chinese)"
    )


def is_same_language(source: str | None, target: str) -> bool:
    """Whether text in `source` (an ISO code, or a name as Qwen3-ASR reports it: "English", "Chinese")
    needs no translation into `target`, so the caller can skip the LLM.

    Only Mandarin in Simplified script counts as "zh": Cantonese ("yue", "Cantonese") is written with
    colloquial characters and Traditional tags (zh-TW, zh-HK, zh-Hant) use another script, so both are
    translated into Simplified Chinese. An unknown or missing source is never the same. An unsupported
    `target` raises `UnsupportedLanguageError`.
    """
    target_code = normalize_target_language(target)
    return bool(source) and _language_key(source or "") == target_code

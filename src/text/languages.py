"""Languages Qwen3-ASR transcribes, by ISO-639-1 code and by the full name the model uses.

The list mirrors `qwen_asr.inference.utils.SUPPORTED_LANGUAGES` (a test checks they agree); it is
copied rather than imported because importing qwen_asr costs ~600 MB and 5 s, and the gateway must
validate requests without it.
"""

from __future__ import annotations

from asr_server.errors import InvalidField

# ISO-639-1 (or -3 where no two-letter code exists) → Qwen3-ASR language name.
LANGUAGE_BY_CODE: dict[str, str] = {
    "zh": "Chinese",
    "en": "English",
    "yue": "Cantonese",
    "ar": "Arabic",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
    "id": "Indonesian",
    "it": "Italian",
    "ko": "Korean",
    "ru": "Russian",
    "th": "Thai",
    "vi": "Vietnamese",
    "ja": "Japanese",
    "tr": "Turkish",
    "hi": "Hindi",
    "ms": "Malay",
    "nl": "Dutch",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "pl": "Polish",
    "cs": "Czech",
    "fil": "Filipino",
    "fa": "Persian",
    "el": "Greek",
    "ro": "Romanian",
    "hu": "Hungarian",
    "mk": "Macedonian",
}
CODE_BY_LANGUAGE: dict[str, str] = {name: code for code, name in LANGUAGE_BY_CODE.items()}
# Common aliases clients send.
_ALIASES = {"tl": "Filipino", "zh-cn": "Chinese", "zh-hans": "Chinese", "zh-tw": "Chinese", "mandarin": "Chinese"}


def normalize_language(value: str | None, *, param: str = "language") -> str | None:
    """Map an ISO code ("en", "zh-CN") or name ("english") to the model's name; None/"" = auto-detect.

    Raises InvalidField (400) naming the supported languages for anything else.
    """
    if value is None or not value.strip() or value.strip().lower() == "auto":
        return None
    key = value.strip().lower().replace("_", "-")
    if key in LANGUAGE_BY_CODE:
        return LANGUAGE_BY_CODE[key]
    if key in _ALIASES:
        return _ALIASES[key]
    if key.split("-")[0] in LANGUAGE_BY_CODE:
        return LANGUAGE_BY_CODE[key.split("-")[0]]
    for name in CODE_BY_LANGUAGE:
        if name.lower() == key:
            return name
    supported = ", ".join(f"{code} ({name})" for code, name in LANGUAGE_BY_CODE.items())
    raise InvalidField(f"unsupported language {value!r}; supported: {supported}", param=param)


def language_code(name: str | None) -> str | None:
    """The ISO code for a model language name ("English" → "en"); unknown names pass through lower-cased."""
    if not name:
        return None
    return CODE_BY_LANGUAGE.get(name, name.lower())


def language_label(name: str | None) -> str | None:
    """The model's language name as the API reports it: lower-case ("english"), None when unknown."""
    return name.lower() if name else None

"""A deterministic engine for API tests and demos: no model, answers at once.

Its transcript is the request's context (prompt) when given, else a fixed sentence in the requested
language. Tokens are the text's words (CJK: characters) with their leading space, ids and log-probabilities
derived from a CRC of each token, so they are deterministic and differ between tokens. It exists to
exercise the HTTP and WebSocket layers; it is never the default.
"""

from __future__ import annotations

import re
import zlib

from asr_server.engines.base import Engine, TranscribeItem, Transcript

_CJK = "\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af"
# A token: optional whitespace, then one CJK character or a run of other non-space characters.
_TOKEN = re.compile(rf"\s*(?:[{_CJK}]|[^\s{_CJK}]+)")
FAKE_VOCAB_SIZE = 151_643  # Qwen3's text vocabulary, so ids look like the real model's

FIXED_SENTENCES = {
    "Chinese": "这是一个测试转写。",
    "English": "This is a test transcript.",
}


class FakeEngine(Engine):
    name = "fake"

    def __init__(self, model_id: str = "fake") -> None:
        self.model_id = model_id
        self._loaded = False
        self.batches: list[int] = []  # sizes of the batches run, for tests of batching

    def load(self) -> None:
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        self.batches.append(len(items))
        results = []
        for item in items:
            text = item.context.strip() or FIXED_SENTENCES.get(item.language or "English", FIXED_SENTENCES["English"])
            results.append(fake_transcript(text, item.language or _guess_language(text)))
        return results


def fake_transcript(text: str, language: str) -> Transcript:
    """`text` with deterministic tokens: their bytes concatenate to the text's UTF-8."""
    pieces = [p.encode() for p in _TOKEN.findall(text)]
    checksums = [zlib.crc32(p) for p in pieces]
    return Transcript(
        text=text,
        language=language,
        tokens=tuple(c % FAKE_VOCAB_SIZE for c in checksums),
        logprobs=tuple(-(c % 1000) / 2000 for c in checksums),  # in (-0.5, 0]
        token_bytes=tuple(pieces),
    )


def _guess_language(text: str) -> str:
    """What a real model would detect, judged by script: enough for tests of language handling."""
    if any("\u3040" <= ch <= "\u30ff" for ch in text):
        return "Japanese"
    if any("\u4e00" <= ch <= "\u9fff" for ch in text):
        return "Chinese"
    if any("\uac00" <= ch <= "\ud7af" for ch in text):
        return "Korean"
    return "English"

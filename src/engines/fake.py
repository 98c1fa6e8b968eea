"""A deterministic engine for API tests and demos: no model, answers at once.

Its transcript is the request's context (prompt) when given, else a fixed sentence in the requested
language. It exists to exercise the HTTP and WebSocket layers; it is never the default.
"""

from __future__ import annotations

from asr_server.engines.base import Engine, TranscribeItem, Transcript

FIXED_SENTENCES = {
    "Chinese": "这是一个测试转写。",
    "English": "This is a test transcript.",
}


class FakeEngine(Engine):
    name = "fake"

    def __init__(self) -> None:
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
            results.append(Transcript(text=text, language=item.language or _guess_language(text)))
        return results


def _guess_language(text: str) -> str:
    """What a real model would detect, judged by script: enough for tests of language handling."""
    if any("\u3040" <= ch <= "\u30ff" for ch in text):
        return "Japanese"
    if any("\u4e00" <= ch <= "\u9fff" for ch in text):
        return "Chinese"
    if any("\uac00" <= ch <= "\ud7af" for ch in text):
        return "Korean"
    return "English"

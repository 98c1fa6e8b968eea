"""Qwen3-ASR speech-to-text service: OpenAI-compatible REST, subtitles, translation, live captions."""

__version__ = "0.1.0"

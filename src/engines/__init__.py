"""Inference engines behind one small contract (`Engine`), chosen by `ASR_ENGINE`."""

from __future__ import annotations

from asr_server.config import EngineName, Settings
from asr_server.engines.base import (
    AlignedUnit,
    AlignItem,
    Engine,
    TranscribeItem,
    Transcript,
)

__all__ = ["AlignItem", "AlignedUnit", "Engine", "TranscribeItem", "Transcript", "create_engine"]


def create_engine(settings: Settings) -> Engine:
    """Build (not load) the engine the settings name. Heavy imports happen in `Engine.load()`."""
    if settings.asr_engine == EngineName.fake:
        from asr_server.engines.fake import FakeEngine

        return FakeEngine()
    if settings.asr_engine == EngineName.transformers:
        from asr_server.engines.transformers_engine import TransformersEngine

        return TransformersEngine(settings)
    raise ValueError(f"ASR_ENGINE={settings.asr_engine.value} is not available in this build")

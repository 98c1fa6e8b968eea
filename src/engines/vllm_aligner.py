"""Qwen3-ForcedAligner on vLLM: vLLM's own pooling model (`Qwen3ASRForcedAlignerForTokenClassification`) behind a
second async engine, and qwen-asr's word splitting and timestamp repair (`aligner_text`, ported so that it runs
beside transformers 5). The published checkpoint loads unchanged: `hf_overrides` names vLLM's architecture.

The aligner classifies each `<timestamp>` token of "audio + words with two timestamps each" into a time bin of
`timestamp_segment_time` ms; what qwen-asr's `align()` does with those bins, `timed_words` does here.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from asr_server.config import Settings
from asr_server.engines.aligner_text import aligner_prompt, split_words, timed_words
from asr_server.engines.base import AlignedUnit, AlignItem
from asr_server.engines.vllm_engine import AUDIO_TOKENS_PER_SECOND, engine_options
from asr_server.media import SAMPLE_RATE

ALIGNER_ARCHITECTURE = "Qwen3ASRForcedAlignerForTokenClassification"
ALIGNER_MAX_AUDIO_SECONDS = 180  # the published aligner's input limit (qwen-asr's MAX_FORCE_ALIGN_INPUT_SECONDS)
WORD_TOKEN_ALLOWANCE = 4096  # the words and their timestamp tokens


class VllmAligner:
    """Start with `await start()` inside the engine's event loop; `align_one` runs there too."""

    def __init__(self, settings: Settings, model_id: str) -> None:
        self._settings = settings
        self.model_id = model_id
        self._llm: Any = None
        self._params: Any = None
        self._timestamp_id = -1
        self._segment_ms = 80.0
        self._ids = itertools.count()

    async def start(self) -> None:
        from vllm import AsyncEngineArgs, AsyncLLMEngine, PoolingParams

        args = AsyncEngineArgs(
            model=self.model_id,
            runner="pooling",
            hf_overrides={"architectures": [ALIGNER_ARCHITECTURE]},
            max_model_len=ALIGNER_MAX_AUDIO_SECONDS * AUDIO_TOKENS_PER_SECOND + WORD_TOKEN_ALLOWANCE,
            **engine_options(self._settings),
        )
        self._llm = AsyncLLMEngine.from_engine_args(args)
        config = self._llm.model_config.hf_config
        self._timestamp_id = int(config.timestamp_token_id)
        self._segment_ms = float(config.timestamp_segment_time)
        self._params = PoolingParams(task="token_classify")

    async def align_one(self, item: AlignItem) -> list[AlignedUnit]:
        words = split_words(item.text, item.language)
        if not words:
            return []
        request = {
            "prompt": aligner_prompt(words),
            "multi_modal_data": {"audio": (np.asarray(item.audio, dtype=np.float32), SAMPLE_RATE)},
        }
        final: Any = None
        async for output in self._llm.encode(request, self._params, f"align-{next(self._ids)}"):
            final = output
        if final is None:
            return []
        logits = np.asarray(final.outputs.data.float())  # one row of time-bin scores per prompt token
        token_ids = np.asarray(final.prompt_token_ids)
        class_ids = logits[token_ids == self._timestamp_id].argmax(axis=-1)
        return timed_words(words, [int(c) for c in class_ids], self._segment_ms)

    @property
    def errored(self) -> bool:
        return bool(getattr(self._llm, "errored", False))

    def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()

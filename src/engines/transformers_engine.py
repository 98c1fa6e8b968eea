"""The standard engine: qwen-asr's `Qwen3ASRModel` on transformers (CPU or CUDA).

torch, transformers and qwen_asr are imported in `load()` only, so the gateway stays small until a
model is needed. The forced aligner loads on the first alignment and unloads with the model.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from loguru import logger

from asr_server.config import Settings
from asr_server.engines.base import AlignedUnit, AlignItem, Engine, TranscribeItem, Transcript
from asr_server.errors import EngineUnavailable

SAMPLE_RATE = 16_000


def _missing_extra(exc: ImportError) -> EngineUnavailable:
    return EngineUnavailable(
        f"the transformers engine needs the 'asr' extra (pip install 'qwen3-asr-server[asr]'): {exc}",
        code="missing_dependency",
    )


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._model_id = settings.resolved_model_id()
        self._aligner_id = settings.forced_aligner_id or None
        self._model: Any = None
        self._aligner: Any = None
        self._device = "cpu"
        self._dtype_name = "float32"

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _torch_options(self) -> tuple[Any, str, Any]:
        import torch

        device = self._settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable(f"DEVICE={device} but no CUDA device is available", code="no_gpu")
        dtype_name = self._settings.dtype
        if dtype_name == "auto":
            dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
        if device == "cpu" and self._settings.cpu_threads:
            torch.set_num_threads(self._settings.cpu_threads)
        return torch, device, getattr(torch, dtype_name)

    def load(self) -> None:
        try:
            from qwen_asr import Qwen3ASRModel
        except ImportError as exc:
            raise _missing_extra(exc) from exc
        torch, device, dtype = self._torch_options()
        started = time.perf_counter()
        logger.info("loading {} on {} ({})", self._model_id, device, dtype)
        try:
            self._model = Qwen3ASRModel.from_pretrained(
                self._model_id,
                dtype=dtype,
                device_map=device,
                max_inference_batch_size=self._settings.max_batch_size,
                max_new_tokens=self._settings.max_new_tokens,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            # OSError covers "not a local folder and not reachable on the hub".
            raise EngineUnavailable(f"cannot load model {self._model_id!r}: {exc}", code="model_load_failed") from exc
        self._device, self._dtype_name = device, str(dtype).removeprefix("torch.")
        logger.info("loaded {} in {:.1f} s", self._model_id, time.perf_counter() - started)
        del torch

    def unload(self) -> None:
        if self._model is None and self._aligner is None:
            return  # never loaded: do not import torch just to free nothing
        self._model = None
        self._aligner = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- inference ---------------------------------------------------------------------------
    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        if self._model is None:
            raise EngineUnavailable("the model is not loaded")
        results = self._model.transcribe(
            audio=[(item.audio, SAMPLE_RATE) for item in items],
            context=[item.context for item in items],
            language=[item.language for item in items],
        )
        return [Transcript(text=r.text or "", language=r.language or "") for r in results]

    @property
    def supports_alignment(self) -> bool:
        return self._aligner_id is not None

    def _ensure_aligner(self) -> Any:
        if self._aligner is None:
            if self._aligner_id is None:
                raise EngineUnavailable("no forced aligner is configured (FORCED_ALIGNER_ID)")
            from qwen_asr import Qwen3ForcedAligner

            torch, device, dtype = self._torch_options()
            del torch
            logger.info("loading forced aligner {} on {}", self._aligner_id, device)
            try:
                self._aligner = Qwen3ForcedAligner.from_pretrained(self._aligner_id, dtype=dtype, device_map=device)
            except (OSError, ValueError, RuntimeError) as exc:
                raise EngineUnavailable(
                    f"cannot load forced aligner {self._aligner_id!r}: {exc}", code="aligner_load_failed"
                ) from exc
        return self._aligner

    def align(self, items: list[AlignItem]) -> list[list[AlignedUnit]]:
        aligner = self._ensure_aligner()
        results = aligner.align(
            audio=[(item.audio, SAMPLE_RATE) for item in items],
            text=[item.text for item in items],
            language=[item.language for item in items],
        )
        return [
            [AlignedUnit(text=unit.text, start=float(unit.start_time), end=float(unit.end_time)) for unit in result]
            for result in results
        ]

    def describe(self) -> dict[str, object]:
        return {
            "engine": self.name,
            "model": self._model_id,
            "forced_aligner": self._aligner_id,
            "device": self._device,
            "dtype": self._dtype_name,
            "aligner_loaded": self._aligner is not None,
        }

"""The standard engine: qwen-asr's `Qwen3ASRModel` on transformers (CPU or CUDA).

torch, transformers and qwen_asr are imported in `load()` only, so the gateway stays small until a
model is needed. The forced aligner loads on the first alignment and unloads with the model.

Acceleration switches act once, in `load()`, on the model instance (never per request): the audio
encoder replaced by an ONNX Runtime/TensorRT one (ONNX_ENCODER_PATH/TRT_ENCODER_PATH), qwen-asr's
`generate` replaced by speculative decoding (USE_SPECULATIVE), the prefill's LM head limited to the last
position and the encoder's convolutions grouped (BOUND_PREFILL_MEMORY), attention kernels, TF32 and cuDNN
benchmark. `describe()` (→ /ready and the load log) says which path is active.
"""

from __future__ import annotations

import gc
import importlib.util
import time
from typing import Any

from loguru import logger

from asr_server.config import Settings
from asr_server.engines.base import AlignedUnit, AlignItem, Engine, TranscribeItem, Transcript
from asr_server.engines.fpenv import reset_floating_point_env
from asr_server.engines.hardware import (
    cap_gpu_memory,
    cpu_dtype,
    install_memory_plan,
    physical_cores,
    plan_gpu_memory,
)
from asr_server.engines.quantization import load_dtype, quantize_model
from asr_server.engines.weights import resolve_weights
from asr_server.errors import EngineUnavailable
from asr_server.media import SAMPLE_RATE

ENCODER_CONV_CHUNKS = 50  # one-second mel chunks per encoder convolution call when BOUND_PREFILL_MEMORY=1


def _missing_extra(exc: ImportError) -> EngineUnavailable:
    return EngineUnavailable(
        f"the transformers engine needs the 'asr' extra (pip install 'qwen3-asr-server[asr]'): {exc}",
        code="missing_dependency",
    )


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._model_id = self.model_id = settings.resolved_model_id()
        self._aligner_id = settings.forced_aligner_id or None
        self._model: Any = None
        self._aligner: Any = None
        self._device = "cpu"
        self._dtype_name = "float32"
        self._attn = "sdpa"
        self._encoder: Any = None  # OnnxAudioEncoder when the encoder was replaced
        self._speculative: Any = None  # SpeculativeGenerator when USE_SPECULATIVE=1
        self._quantized: Any = None  # QuantizationResult when QUANTIZE is int8/fp8
        self._memory_plan: Any = None  # MemoryPlan when GPU_MEMORY_LIMIT_GB caps a CUDA device
        self._recorder: Any = None  # GenerationRecorder: token ids and log-probabilities of each generate row
        self._token_text: Any = None  # TokenText: the transcript part of a row, and token bytes

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
            # int8 on a CPU quantizes a float32 model (see quantization.py).
            on_cpu = "float32" if self._settings.quantize == "int8" else cpu_dtype()
            dtype_name = "bfloat16" if device.startswith("cuda") else on_cpu
        if device == "cpu":
            # One thread per physical core: torch's default counts hyper-threads and ignores container quotas.
            torch.set_num_threads(self._settings.cpu_threads or physical_cores())
        elif self._settings.gpu_memory_limit_gb:
            cap_gpu_memory(torch, device, self._settings.gpu_memory_limit_gb)
        return torch, device, getattr(torch, dtype_name)

    def load(self) -> None:
        try:
            from qwen_asr import Qwen3ASRModel
        except ImportError as exc:
            raise _missing_extra(exc) from exc
        reset_floating_point_env()  # importing qwen_asr (nagisa) turned on flush-to-zero
        torch, device, dtype = self._torch_options()
        self._attn = self._attention_kernels(torch, device)
        started = time.perf_counter()
        logger.info("loading {} on {} ({}, {})", self._model_id, device, dtype, self._attn)
        try:
            self._model = Qwen3ASRModel.from_pretrained(
                resolve_weights(self._model_id),
                dtype=load_dtype(self._settings, device, dtype),
                device_map=device,
                attn_implementation=self._attn,
                max_inference_batch_size=self._settings.max_batch_size,
                max_new_tokens=self._settings.max_new_tokens,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            # OSError covers "not a local folder and not reachable on the hub".
            raise EngineUnavailable(f"cannot load model {self._model_id!r}: {exc}", code="model_load_failed") from exc
        self._device, self._dtype_name = device, str(dtype).removeprefix("torch.")
        model = self._model.model
        # In place and before _accelerate, which hooks the LM head that quantization replaces.
        self._quantized = quantize_model(model, self._settings.quantize, device)
        self._accelerate(device, dtype)
        if self._settings.gpu_memory_limit_gb and device.startswith("cuda"):
            self._memory_plan = plan_gpu_memory(torch, device, self._settings, model)
            install_memory_plan(self._model, self._memory_plan)
        self._install_recorder()
        logger.info("loaded {} in {:.1f} s: {}", self._model_id, time.perf_counter() - started, self.describe()["path"])
        del torch

    def _install_recorder(self) -> None:
        """Wrap the final `generate` (the model's, or the speculative generator's) to keep token scores."""
        from asr_server.engines.token_scores import GenerationRecorder
        from asr_server.engines.token_text import TokenText

        self._recorder = GenerationRecorder()
        self._recorder.install(self._model.model)
        self._token_text = TokenText(self._model.processor.tokenizer)

    def _attention_kernels(self, torch: Any, device: str) -> str:
        """Resolve ATTN_IMPLEMENTATION; on CUDA also apply TF32 and cuDNN benchmark (process-wide switches)."""
        cuda = device.startswith("cuda")
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = self._settings.allow_tf32
            torch.backends.cudnn.allow_tf32 = self._settings.allow_tf32
            torch.backends.cudnn.benchmark = self._settings.cudnn_benchmark
        attn = self._settings.attn_implementation
        if attn == "auto":
            return "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
        if attn == "flash_attention_2" and not cuda:
            raise EngineUnavailable("ATTN_IMPLEMENTATION=flash_attention_2 needs a CUDA device", code="no_gpu")
        return attn

    def _accelerate(self, device: str, dtype: Any) -> None:
        """Swap parts of the freshly loaded model, once, as the acceleration settings ask."""
        s = self._settings
        model = self._model.model  # the transformers Qwen3ASRForConditionalGeneration
        encoder_path = s.trt_encoder_path or s.onnx_encoder_path
        if encoder_path:
            from asr_server.engines.onnx_encoder import install_onnx_encoder

            self._encoder = install_onnx_encoder(
                model,
                encoder_path,
                device=device,
                tensorrt=bool(s.trt_encoder_path),
                threads=s.cpu_threads,
                max_seconds=min(s.max_audio_seconds, s.long_audio_seconds),  # the longest item it gets
            )
        if s.bound_prefill_memory:
            _bound_encoder_convolutions(model)
        if s.use_speculative:
            self._speculative = self._load_draft(model, device, dtype)
            self._model.model = self._speculative  # qwen-asr calls .generate/.device/.dtype on it
        elif s.bound_prefill_memory:
            # generate() reads only the last position's logits; without this the prefill computes
            # vocabulary-wide logits for every prompt position (1.5 GB for 200 s of audio in fp32).
            model.thinker.lm_head.register_forward_pre_hook(_last_position_only)

    def _load_draft(self, target: Any, device: str, dtype: Any) -> Any:
        from transformers import AutoModel

        from asr_server.engines.speculative import SpeculativeGenerator, check_compatible

        draft_id = self._settings.fast_model_id
        logger.info("loading draft model {} for speculative decoding", draft_id)
        try:
            draft = AutoModel.from_pretrained(draft_id, dtype=dtype, device_map=device, attn_implementation=self._attn)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EngineUnavailable(f"cannot load draft model {draft_id!r}: {exc}", code="model_load_failed") from exc
        if self._settings.bound_prefill_memory:
            _bound_encoder_convolutions(draft)
        reason = check_compatible(target, draft.eval())
        if reason:
            raise EngineUnavailable(f"FAST_MODEL_ID={draft_id} cannot draft for {self._model_id}: {reason}")
        return SpeculativeGenerator(target, draft, self._settings.speculative_k)

    def unload(self) -> None:
        if self._model is None and self._aligner is None:
            return  # never loaded: do not import torch just to free nothing
        self._model = None
        self._aligner = None
        self._encoder = None
        self._speculative = None
        self._quantized = self._memory_plan = None
        self._recorder = self._token_text = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- inference ---------------------------------------------------------------------------
    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        if self._model is None:
            raise EngineUnavailable("the model is not loaded")
        self._recorder.take()  # nothing left from a call that raised
        results = self._model.transcribe(
            audio=[(item.audio, SAMPLE_RATE) for item in items],
            context=[item.context for item in items],
            language=[item.language for item in items],
        )
        rows = self._recorder.take()
        per_item = self._rows_per_item(items, len(rows))
        transcripts = []
        for item, result in zip(items, results, strict=True):
            text = result.text or ""
            item_rows = [rows.pop(0) for _ in range(per_item.pop(0))] if per_item else []
            parts = [self._token_text.text_part(row, bool(item.language)) for row in item_rows] if text.strip() else []
            transcripts.append(self._token_text.transcript(text, result.language or "", parts))
        return transcripts

    @staticmethod
    def _rows_per_item(items: list[TranscribeItem], rows: int) -> list[int]:
        """How many generated rows (qwen-asr chunks) belong to each item; [] when that cannot be told."""
        if rows == len(items):
            return [1] * rows
        from qwen_asr.inference.utils import MAX_ASR_INPUT_SECONDS, split_audio_into_chunks

        counts = [
            len(split_audio_into_chunks(wav=item.audio, sr=SAMPLE_RATE, max_chunk_sec=MAX_ASR_INPUT_SECONDS))
            for item in items
        ]
        return counts if sum(counts) == rows else []

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
                self._aligner = Qwen3ForcedAligner.from_pretrained(
                    resolve_weights(self._aligner_id), dtype=dtype, device_map=device
                )
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
        s = self._settings
        path = ["transformers"]
        if s.trt_encoder_path or s.onnx_encoder_path:
            path.append("tensorrt-encoder" if s.trt_encoder_path else "onnx-encoder")
        if s.use_speculative:
            path.append("speculative")
        if self._quantized is not None:
            path.append(self._quantized.mode)
        return {
            "engine": self.name,
            "path": "+".join(path),
            "model": self._model_id,
            "forced_aligner": self._aligner_id,
            "device": self._device,
            "dtype": self._dtype_name,
            "attn_implementation": self._attn,
            "audio_encoder": f"onnxruntime/{self._encoder.provider}" if self._encoder is not None else "pytorch",
            "speculative": {"draft": s.fast_model_id, "k": s.speculative_k} if s.use_speculative else None,
            "aligner_loaded": self._aligner is not None,
            "quantize": self._quantized.describe() if self._quantized else s.quantize,
            "memory_plan": (
                {"piece_seconds": self._memory_plan.piece_seconds, "budget_gib": self._memory_plan.budget_bytes / 2**30}
                if self._memory_plan
                else None
            ),
        }

    def acceleration_stats(self) -> dict[str, float]:
        """Counters for Prometheus: speculative acceptance and tokens per target pass, encoder time."""
        stats: dict[str, float] = {}
        if self._speculative is not None:
            spec = self._speculative.stats()
            stats.update(
                speculative_acceptance_rate=spec.acceptance_rate,
                speculative_tokens_per_target_pass=spec.tokens_per_target_pass,
                speculative_proposed_tokens=float(spec.proposed),
                speculative_accepted_tokens=float(spec.accepted),
                speculative_target_passes=float(spec.target_passes),
            )
        if self._encoder is not None:
            stats.update(encoder_calls=float(self._encoder.calls), encoder_seconds=self._encoder.seconds)
        return stats


def _bound_encoder_convolutions(model: Any) -> None:
    """The PyTorch audio encoder convolves up to `conv_chunksize` (500) one-second mel chunks at once; with
    480 channels the first convolution and its GELU hold ~6 MB per chunk each (2.5 GB at 200 s). Chunks
    are independent, so smaller groups give the same numbers with a bounded peak."""
    tower = model.thinker.audio_tower
    if hasattr(tower, "conv_chunksize"):  # not on an ONNX encoder
        tower.conv_chunksize = min(tower.conv_chunksize, ENCODER_CONV_CHUNKS)


def _last_position_only(_head: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """forward pre-hook on the LM head: keep the last position of the hidden states (left padding keeps
    every row's last real token there)."""
    return (args[0][:, -1:, :], *args[1:])

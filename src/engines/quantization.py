"""Weight quantization at load (`QUANTIZE=int8|fp8`), and the start-up check of what this hardware supports.

- int8 on CPU: PyTorch's dynamic quantization (`torch.ao`, fbgemm kernels): the decoder's linear layers and
  the LM head get int8 weights (per output channel) and int8 matmuls on activations quantized per call; the
  token embedding keeps int8 rows (weight-only). Measured at the 0.6B dimensions: ~1.7x faster decoding
  and ~half the resident weights (bench/quantization.py). The audio encoder stays float32 unless
  `encoder=True`: it is ~a fifth of the time and its convolutions do not quantize this way.
- int8 on CUDA: torchao's int8 weight-only tensors (weights stored in int8, matmuls in the model dtype):
  halves the weights' memory, not a speed-up without torch.compile.
- fp8 on CUDA with compute capability >= 8.9 (Ada, Hopper and newer): torchao's float8 weight-only.
  With USE_VLLM=1, fp8 is vLLM's own (`quantization="fp8"`, see `vllm_quantization`).

Everything happens in place on the loaded model: quantizing a copy would keep the float32 decoder
resident beside it. `check_quantization` runs at start, before anything heavy is imported (the gateway
never imports torch), and fails with what this hardware supports; `quantize_model` re-checks what only
torch can tell (the GPU's capability) at load.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import shutil
from dataclasses import dataclass
from typing import Any

from asr_server.config import EngineName, Settings
from asr_server.engines.hardware import query_first_gpu
from asr_server.errors import EngineUnavailable

FP8_MIN_CAPABILITY = (8, 9)  # float8 matmul/storage support: Ada (8.9), Hopper (9.0) and newer
_TORCHAO_HINT = "the extra 'quantize': pip install 'qwen3-asr-server[quantize]'"


@dataclass(frozen=True)
class QuantizationResult:
    """What `quantize_model` did: for /ready, the load log and the benchmark."""

    mode: str  # "int8" | "fp8"
    method: str  # e.g. "torch.ao dynamic int8"
    modules: int  # layers whose weights were quantized
    weight_bytes_before: int
    weight_bytes_after: int

    def describe(self) -> dict[str, object]:
        """For /ready: what was quantized, and the model's weight bytes unquantized (in the dtype it would
        serve in) and quantized."""
        return {
            "mode": self.mode,
            "method": self.method,
            "layers": self.modules,
            "weight_bytes": {"unquantized": self.weight_bytes_before, "quantized": self.weight_bytes_after},
        }


# --------------------------------------------------------------------------------------- at start
def _gpu_capability() -> tuple[int, int] | None:
    """Compute capability of the first GPU via nvidia-smi (no torch import); None when unknown."""
    capability = query_first_gpu("compute_cap")
    try:
        major, minor = (capability or "").split(".")
        return int(major), int(minor)
    except ValueError:
        return None


def _start_device(settings: Settings) -> str:
    """Where the model will run, decided without torch: DEVICE, or for `auto` whether a GPU is visible."""
    if settings.device != "auto":
        return settings.device
    return "cuda" if shutil.which("nvidia-smi") else "cpu"  # a driver without a usable GPU fails at load


def _fp8_unsupported(where: str) -> EngineUnavailable:
    return EngineUnavailable(
        f"QUANTIZE=fp8 needs a CUDA GPU with compute capability >= 8.9 (Ada, Hopper or newer), or USE_VLLM=1 "
        f"(vLLM's own fp8); {where}. Supported here: QUANTIZE=int8 or QUANTIZE=none",
        code="unsupported_hardware",
    )


def check_quantization(settings: Settings) -> None:
    """Raise EngineUnavailable at start when QUANTIZE cannot work on this hardware and configuration."""
    mode = settings.quantize
    if mode == "none" or (settings.asr_engine == EngineName.fake and not settings.use_vllm):
        return  # the fake engine has no weights to quantize
    if settings.uses_vllm:
        if mode == "int8":
            raise EngineUnavailable(
                "QUANTIZE=int8 is for the transformers engine; with USE_VLLM=1 use QUANTIZE=fp8 (vLLM's own fp8) "
                "or QUANTIZE=none",
                code="bad_config",
            )
        return  # fp8: vLLM checks its own hardware support at load
    device = _start_device(settings)
    if device == "cpu":
        if mode == "fp8":
            raise _fp8_unsupported("this machine runs the model on the CPU")
        if settings.dtype not in ("auto", "float32"):
            raise EngineUnavailable(
                f"QUANTIZE=int8 on CPU quantizes a float32 model; DTYPE={settings.dtype} is not supported with it "
                "(use DTYPE=auto or float32)",
                code="bad_config",
            )
        return
    if importlib.util.find_spec("torchao") is None:
        raise EngineUnavailable(
            f"QUANTIZE={mode} on a CUDA GPU needs torchao: {_TORCHAO_HINT}", code="missing_dependency"
        )
    capability = _gpu_capability() if mode == "fp8" else None
    if capability is not None and capability < FP8_MIN_CAPABILITY:
        raise _fp8_unsupported(f"this GPU has compute capability {capability[0]}.{capability[1]}")


def vllm_quantization(settings: Settings) -> str | None:
    """The `quantization` argument for vLLM's engine: its own online fp8 for QUANTIZE=fp8."""
    return "fp8" if settings.quantize == "fp8" else None


# ---------------------------------------------------------------------------------------- at load
def load_dtype(settings: Settings, device: str, dtype: Any) -> Any:
    """The dtype to load the checkpoint in. int8 on CPU: the checkpoint's own (bf16 for the published models),
    upcast one layer at a time while quantizing; loading it as float32 first peaked at 5.2 GB for 0.6B
    (12.3 GB for 1.7B), far above the 2.2 GB (4.8 GB) that stay."""
    return "auto" if settings.quantize == "int8" and device == "cpu" else dtype


def quantize_model(model: Any, mode: str, device: str, *, encoder: bool = False) -> QuantizationResult | None:
    """Quantize the transformers Qwen3-ASR model (`Qwen3ASRForConditionalGeneration`) in place."""
    if mode == "none":
        return None
    import torch

    thinker = model.thinker
    # What the model would hold unquantized: on CPU it serves in float32 (a bf16 checkpoint is upcast).
    before = _weight_bytes(thinker, float_size=4 if device == "cpu" else None)
    if device == "cpu":
        if mode != "int8":
            raise _fp8_unsupported("the model runs on the CPU")
        count = _int8_dynamic_cpu(torch, thinker, encoder=encoder)
        model.float()  # the rest (encoder, norms) as float32: what the int8 kernels take and return
        method = "torch.ao dynamic int8 (fbgemm)"
    else:
        if mode == "fp8":
            capability = torch.cuda.get_device_capability(torch.device(device))
            if capability < FP8_MIN_CAPABILITY:
                raise _fp8_unsupported(
                    f"{torch.cuda.get_device_name(torch.device(device))} has compute capability "
                    f"{capability[0]}.{capability[1]}"
                )
        count = _torchao_weight_only(torch, thinker, mode, encoder=encoder)
        method = f"torchao {mode} weight-only"
    _release_freed_memory()
    return QuantizationResult(mode, method, count, before, _weight_bytes(thinker))


def _selected(name: str, *, encoder: bool) -> bool:
    """Decoder layers and the LM head always; the audio encoder's linear layers when asked."""
    return name.startswith("model.") or name == "lm_head" or (encoder and name.startswith("audio_tower."))


def _int8_dynamic_cpu(torch: Any, thinker: Any, *, encoder: bool) -> int:
    from torch.ao.nn.quantized import Embedding as QuantizedEmbedding
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import float_qparams_weight_only_qconfig, per_channel_dynamic_qconfig

    count = 0
    # Containers only: a list holding the leaf layers too would keep every replaced float32 layer alive until
    # the loop ends (measured: a 5.0 GB peak instead of 2.6 GB at the 0.6B dimensions).
    parents = [(name, module) for name, module in thinker.named_modules() if next(module.children(), None)]
    for parent_name, parent in parents:
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is torch.nn.Linear and _selected(name, encoder=encoder):
                child.float()  # exact for a bf16 checkpoint; one layer at a time, never a whole float32 copy
                # Per output channel: one scale per row keeps small rows precise (per tensor costs accuracy).
                child.qconfig = per_channel_dynamic_qconfig
                setattr(parent, child_name, DynamicLinear.from_float(child))
            elif type(child) is torch.nn.Embedding and name == "model.embed_tokens":
                child.float()
                # Weight-only int8 rows (per-row scale and offset): 151,936 x hidden floats are a fifth of the
                # 0.6B model, and an embedding lookup gains nothing from float32.
                child.qconfig = float_qparams_weight_only_qconfig
                setattr(parent, child_name, QuantizedEmbedding.from_float(child))
            else:
                continue
            count += 1
    return count


def _torchao_weight_only(torch: Any, thinker: Any, mode: str, *, encoder: bool) -> int:
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise EngineUnavailable(
            f"QUANTIZE={mode} on a CUDA GPU needs torchao ({_TORCHAO_HINT}): {exc}", code="missing_dependency"
        ) from exc
    names: list[str] = []

    def select(module: Any, name: str) -> bool:
        chosen = isinstance(module, torch.nn.Linear) and _selected(name, encoder=encoder)
        if chosen:
            names.append(name)
        return chosen

    config = Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()
    quantize_(thinker, config, filter_fn=select)
    return len(names)


def _weight_bytes(module: Any, *, float_size: int | None = None) -> int:
    """Bytes of parameters and buffers, counting packed quantized weights too (tied tensors once);
    `float_size`: count floating-point tensors at that many bytes per element instead of their own."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            floating = float_size is not None and tensor.is_floating_point()
            total += tensor.numel() * float_size if floating else _tensor_bytes(tensor)
    for sub in module.modules():
        packed = getattr(sub, "_packed_params", None)
        if packed is not None:
            weight = _unpacked_weight(sub)
            if weight is not None:
                total += weight.numel() * weight.element_size()
    return total


def _tensor_bytes(tensor: Any) -> int:
    inner = getattr(tensor, "__tensor_flatten__", None)  # torchao subclasses: count their inner tensors
    if inner is not None:
        names, _ = inner()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def _unpacked_weight(module: Any) -> Any:
    try:
        return module.weight()  # dynamic Linear and quantized Embedding expose the int8 weight as a method
    except (AttributeError, TypeError, RuntimeError):
        return None


def _release_freed_memory() -> None:
    """Return the freed float32 weights to the OS: glibc keeps freed heap pages mapped, so the resident
    size would not shrink after quantizing in place."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)

"""Fitting the model to the machine: CPU threads, and a GPU memory budget (GPU_MEMORY_LIMIT_GB).

- Threads: torch's own default counts logical CPUs and ignores container CPU quotas; on a 2-CPU container
  of a 64-core host it would start 64 threads that fight over 2 cores. `physical_cores()` counts the
  cores this process may run on, capped by the cgroup quota.
- GPU memory: the caching allocator is capped at the limit (an allocation beyond it raises
  out-of-memory, which the worker answers by halving the batch). What is left after the weights is the
  activation budget; `MemoryPlan` turns it into the longest piece long audio is cut into and into
  sub-batches whose estimated peak fits, so a 20-minute file is processed in bounded pieces.

The activation estimate is computed from the model's config (documented per term in `activation_bytes`),
not measured on a GPU: the out-of-memory halving in the worker is the safety net when it is off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr_server.config import (
    DEFAULT_LARGE_MODEL,
    DEFAULT_SMALL_MODEL,
    LARGE_MODEL_MIN_FREE_GPU_BYTES,
    EngineName,
    Settings,
)
from asr_server.errors import EngineUnavailable

GIB = 1024**3
AUDIO_TOKENS_PER_SECOND = 13  # 100 mel frames -> 13 encoder outputs (one decoder token each)
PROMPT_TOKENS = 96  # chat template, language tag and a short context
MAX_PIECE_SECONDS = 1200.0  # qwen-asr's own MAX_ASR_INPUT_SECONDS
MIN_PIECE_SECONDS = 10.0  # below this the split points (low-energy search over +-5 s) stop making sense
SAFETY = 1.5  # allocator fragmentation, kernels' workspaces, what the estimate leaves out


# ---------------------------------------------------------------------------------------- CPU dtype
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 CPUs with bf16 dot-product instructions


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The instruction-set flags of this machine's CPU (from /proc/cpuinfo; empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_dtype(flags: set[str] | None = None) -> str:
    """DTYPE=auto on a CPU: bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX: measured 1.9-2.4x
    faster than float32 here, see improvements.md), else float32 (emulated bf16 is slower than float32)."""
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if flags & NATIVE_BF16_FLAGS else "float32"


# ------------------------------------------------------------------------------------- CPU threads
def physical_cores() -> int:
    """Physical cores among the CPUs this process may use, capped by the cgroup CPU quota."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        blocks = Path("/proc/cpuinfo").read_text().split("\n\n")
    except OSError:
        blocks = []
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "processor" in fields and int(fields["processor"]) in allowed:
            # Without topology fields (some VMs, ARM) every CPU counts as a core.
            cores.add((fields.get("physical id", fields["processor"]), fields.get("core id", fields["processor"])))
    count = len(cores) or len(allowed)
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2 `cpu.max`, v1 `cfs_quota_us`); None = no limit."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------ GPU budget
@dataclass(frozen=True)
class ActivationCost:
    """Estimated bytes a transcription needs beyond the weights, from the model's dimensions."""

    per_token: float  # decoder: KV cache + one layer's prefill activations, per prompt/output token
    encoder_per_token: float  # audio encoder activations per output frame (it runs one clip at a time)
    conv_per_second: float  # the encoder's convolution stack per second of audio
    conv_seconds: float  # seconds convolved at once (the encoder's conv_chunksize: 50 when bounded)
    new_tokens: int

    def batch_bytes(self, seconds: Sequence[float]) -> float:
        """Peak estimate of one generate() call over clips of these lengths (padded to the longest)."""
        if not seconds:
            return 0.0
        longest = max(seconds)
        tokens = AUDIO_TOKENS_PER_SECOND * longest + PROMPT_TOKENS + self.new_tokens
        decoder = len(seconds) * tokens * self.per_token
        encoder = AUDIO_TOKENS_PER_SECOND * longest * self.encoder_per_token
        conv = min(sum(seconds), self.conv_seconds) * self.conv_per_second
        return SAFETY * (decoder + encoder + conv)


def activation_cost(config: Any, *, element_bytes: int, new_tokens: int, conv_seconds: float) -> ActivationCost:
    """Terms from a `Qwen3ASRConfig`'s thinker dimensions (text and audio sub-configs)."""
    text, audio = config.thinker_config.text_config, config.thinker_config.audio_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim
    # One decoder layer's prefill at a time: residual, normed input, q/k/v/attention output (~6 hidden-size
    # vectors) and the MLP's gate, up and activation (3 intermediate-size vectors).
    layer = 6 * text.hidden_size + 3 * text.intermediate_size
    encoder = 6 * audio.d_model + 2 * audio.encoder_ffn_dim
    # Three stride-2 convolutions over 128 mel bins x 100 frames/s; the first output and its GELU dominate.
    conv = 2 * audio.downsample_hidden_size * (audio.num_mel_bins // 2) * 50
    return ActivationCost(
        per_token=(kv + layer) * element_bytes,
        encoder_per_token=encoder * element_bytes,
        conv_per_second=conv * element_bytes,
        conv_seconds=conv_seconds,
        new_tokens=new_tokens,
    )


@dataclass(frozen=True)
class MemoryPlan:
    """How transcriptions are cut and grouped so each generate() call stays within `budget_bytes`."""

    budget_bytes: float
    piece_seconds: float
    max_batch: int
    cost: ActivationCost

    @classmethod
    def for_budget(cls, budget_bytes: float, cost: ActivationCost, max_batch: int) -> MemoryPlan:
        """The longest piece (<= 1200 s) a single call can take within the budget; fails when < 10 s."""
        if cost.batch_bytes([MIN_PIECE_SECONDS]) > budget_bytes:
            raise EngineUnavailable(
                f"{budget_bytes / GIB:.2f} GiB of GPU memory are left for activations after the weights, less than "
                f"a {MIN_PIECE_SECONDS:g} s clip needs (~{cost.batch_bytes([MIN_PIECE_SECONDS]) / GIB:.2f} GiB): raise "
                "GPU_MEMORY_LIMIT_GB, set QUANTIZE=int8 or choose a smaller MODEL_ID",
                code="out_of_memory",
            )
        if cost.batch_bytes([MAX_PIECE_SECONDS]) <= budget_bytes:
            return cls(budget_bytes, MAX_PIECE_SECONDS, max_batch, cost)
        low, high = MIN_PIECE_SECONDS, MAX_PIECE_SECONDS
        while high - low > 1.0:  # cost grows with length: bisect to the second
            mid = (low + high) / 2
            low, high = (mid, high) if cost.batch_bytes([mid]) <= budget_bytes else (low, mid)
        return cls(budget_bytes, math.floor(low), max_batch, cost)

    def groups(self, seconds: Sequence[float]) -> list[list[int]]:
        """Indices of clips (each <= piece_seconds) grouped into calls that fit, longest first (less padding)."""
        order = sorted(range(len(seconds)), key=lambda i: -seconds[i])
        groups: list[list[int]] = []
        for i in order:
            current = groups[-1] if groups else None
            if (
                current is not None
                and len(current) < self.max_batch
                and self.cost.batch_bytes([seconds[j] for j in (*current, i)]) <= self.budget_bytes
            ):
                current.append(i)
            else:
                groups.append([i])
        return groups


def cap_gpu_memory(torch: Any, device: str, limit_gb: float) -> None:
    """Cap the caching allocator of `device` at `limit_gb`; allocations beyond it raise out-of-memory."""
    index = torch.device(device).index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit_gb * GIB / total), index)


def plan_gpu_memory(torch: Any, device: str, settings: Any, model: Any) -> MemoryPlan:
    """After the weights are loaded (and quantized): the plan for what GPU_MEMORY_LIMIT_GB leaves."""
    index = torch.device(device).index or 0
    budget = settings.gpu_memory_limit_gb * GIB - torch.cuda.memory_allocated(index)
    element = next(p for p in model.parameters() if p.is_floating_point()).element_size()
    # An ONNX encoder has no conv_chunksize (its memory is ONNX Runtime's, outside torch's cap).
    conv_seconds = getattr(model.thinker.audio_tower, "conv_chunksize", 0)
    cost = activation_cost(
        model.config, element_bytes=element, new_tokens=settings.max_new_tokens, conv_seconds=conv_seconds
    )
    return MemoryPlan.for_budget(budget, cost, settings.max_batch_size)


# --------------------------------------------------------------------------- pieces and sub-batches
def install_memory_plan(asr: Any, plan: MemoryPlan) -> None:
    """Replace `transcribe` on this Qwen3ASRModel instance: long audio is cut into pieces of at most
    `plan.piece_seconds` (at quiet points, with qwen-asr's own splitter, as it does at 1200 s) and the
    pieces run in groups that fit the budget; the pieces' texts are joined as qwen-asr joins its chunks."""
    from qwen_asr.inference.utils import merge_languages, split_audio_into_chunks

    original: Callable[..., list[Any]] = asr.transcribe

    def transcribe(audio: list[tuple[Any, int]], context: Any = "", language: Any = None) -> list[Any]:
        n = len(audio)
        contexts = context if isinstance(context, list) else [context] * n
        languages = language if isinstance(language, list) else [language] * n
        pieces: list[tuple[int, Any, int]] = []  # (request index, samples, sample rate)
        for index, (wav, rate) in enumerate(audio):
            # The splitter looks for a quiet point up to `expand` seconds past its target: aim that much short.
            expand = min(5.0, plan.piece_seconds / 4)
            target = plan.piece_seconds - expand
            for chunk, _offset in split_audio_into_chunks(wav, rate, target, search_expand_sec=expand):
                pieces.append((index, chunk, rate))
        results: list[Any] = [None] * len(pieces)
        for group in plan.groups([len(chunk) / rate for _, chunk, rate in pieces]):
            outs = original(
                audio=[(pieces[k][1], pieces[k][2]) for k in group],
                context=[contexts[pieces[k][0]] for k in group],
                language=[languages[pieces[k][0]] for k in group],
            )
            for k, out in zip(group, outs, strict=True):
                results[k] = out
        merged: list[Any] = []
        for index in range(n):
            mine = [r for (owner, _, _), r in zip(pieces, results, strict=True) if owner == index]
            text = "".join(r.text or "" for r in mine)
            merged.append(type(mine[0])(language=merge_languages([r.language for r in mine]), text=text))
        return merged

    asr.transcribe = transcribe


# --- the machine's defaults for settings left unset (asked of nvidia-smi, never of torch) -------------------
def query_first_gpu(field: str) -> str | None:
    """One `nvidia-smi --query-gpu` field of the first GPU (no torch import); None without a readable GPU."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return out.splitlines()[0].strip()
    except (subprocess.SubprocessError, IndexError, OSError):
        return None


def free_gpu_bytes() -> int:
    """Free memory of the first CUDA device, in bytes; 0 without a GPU."""
    free_mib = query_first_gpu("memory.free")
    try:
        return int(free_mib) * 1024 * 1024 if free_mib else 0
    except ValueError:
        return 0


def default_batch_size(free_gpu_bytes: int, model_id: str) -> int:
    """A batch size that fits: free memory after the weights, at ~0.75 GiB per item (30 s clips, bf16)."""
    weights = 4.5 * 1024**3 if "1.7B" in model_id else 1.8 * 1024**3
    return max(1, min(32, int((free_gpu_bytes - weights) / (0.75 * 1024**3))))


def for_this_machine(settings: Settings) -> Settings:
    """`settings` with what was left to the hardware decided, once, when the app or engine is built: the model
    (1.7B when a GPU has room, else 0.6B), the batch size on a GPU, and the forced aligner's piece length (60 s
    on CPU, 180 s on a GPU). `Settings` itself stays a pure value that runs no subprocess; everything built from
    the result agrees on one answer."""
    decide_batch = (
        "max_batch_size" not in settings.model_fields_set
        and settings.device != "cpu"
        and settings.asr_engine != EngineName.fake
    )
    if settings.model_id and settings.align_chunk_seconds and not decide_batch:
        return settings  # nothing left to decide: no nvidia-smi call
    free = free_gpu_bytes()
    update: dict[str, object] = {}
    if not settings.model_id:
        update["model_id"] = DEFAULT_LARGE_MODEL if free >= LARGE_MODEL_MIN_FREE_GPU_BYTES else DEFAULT_SMALL_MODEL
    if not settings.align_chunk_seconds:
        on_gpu = settings.device.startswith("cuda") or (settings.device == "auto" and free > 0)
        update["align_chunk_seconds"] = 180.0 if on_gpu else 60.0
    if decide_batch and free > 0:
        update["max_batch_size"] = default_batch_size(free, str(update.get("model_id", settings.model_id)))
    return settings.model_copy(update=update) if update else settings

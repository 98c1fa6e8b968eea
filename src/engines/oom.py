"""Out-of-memory during inference: recognising it (without importing torch) and the answer that says so.

An out-of-memory on a batch means the batch is too big for the device, not that any input is broken:
the worker runs each half of the batch again (recursively, down to single jobs, see
`ModelWorker._run_with_isolation`). A single job that still does not fit gets `RequestTooLarge` (503
`out_of_memory`): retrying it as is would fail the same way, and the service stays up for the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from loguru import logger

from asr_server.errors import EngineUnavailable, ServiceError

T = TypeVar("T")

OUT_OF_MEMORY_CODE = "out_of_memory"
# Messages of allocation failures raised as plain RuntimeError: CUDA before torch.OutOfMemoryError, cuBLAS/
# cuDNN workspaces, and the CPU allocator ("DefaultCPUAllocator: can't allocate memory").
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


class RequestTooLarge(EngineUnavailable):
    """One request alone needs more memory than the device has left for it."""

    code = OUT_OF_MEMORY_CODE


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError (CUDA, MPS, XPU), MemoryError, allocation-failure RuntimeErrors and
    an out-of-memory forwarded by the gateway's worker process (a ServiceError with code out_of_memory)."""
    if isinstance(exc, ServiceError):
        return exc.code == OUT_OF_MEMORY_CODE
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _OOM_MESSAGES)


def halves(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """The two halves a batch of two or more is retried as (the first half takes the smaller share)."""
    middle = len(items) // 2
    return list(items[:middle]), list(items[middle:])


def too_large(kind: str) -> RequestTooLarge:
    logger.warning("a single {} request ran out of memory; answering 503 out_of_memory", kind)
    return RequestTooLarge(
        f"this {kind} request does not fit in the model's memory even when run alone: send shorter audio "
        "(operators: QUANTIZE=int8, a smaller MODEL_ID, or GPU_MEMORY_LIMIT_GB, which cuts long audio into pieces "
        "that fit)"
    )

"""What every host of an engine shares: the model worker in this process, gateway mode's worker process and the
Ray replicas. One executor sized by the engine's `concurrency`, engine calls that can raise anything without
harming their host, and one mapping of what an engine raised to the service's error codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loguru import logger

from asr_server.config import EngineName, Settings
from asr_server.engines.base import Engine
from asr_server.engines.oom import OUT_OF_MEMORY_CODE, is_out_of_memory
from asr_server.errors import EngineUnavailable, InferenceError, ServiceError


class EngineCallError(RuntimeError):
    """An engine call raised something that must not cross into the event loop as it is."""


def contained(fn: Callable[..., Any], *args: Any) -> Any:
    """Run an engine call on its thread so that whatever it raises reaches the host as an ordinary Exception.

    Without this, a StopIteration escaping the engine cannot be set on the asyncio future (Python raises
    TypeError inside the loop's callback instead) and the job's future is never resolved: its batch and the
    loop waiting on it hang for good. KeyboardInterrupt, SystemExit, GeneratorExit and CancelledError raised
    by engine code would likewise pass every `except Exception` and stop the host's loop.
    """
    try:
        return fn(*args)
    except (StopIteration, StopAsyncIteration) as exc:
        raise EngineCallError(f"the engine raised {type(exc).__name__}") from exc
    except Exception:
        raise
    except BaseException as exc:
        raise EngineCallError(f"the engine raised {type(exc).__name__}") from exc


class EngineExecutor:
    """The threads engine calls run on: one, as engines are not thread-safe, unless the engine batches by itself
    (vLLM declares `concurrency`) and may be called from that many threads at once."""

    def __init__(self, engine: Engine) -> None:
        self.threads = max(1, int(getattr(engine, "concurrency", 1)))
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="engine")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, contained, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def engine_error(exc: BaseException, what: str) -> ServiceError:
    """What an engine call raised, as the error its job gets: a ServiceError as it is; an out-of-memory tagged
    `out_of_memory` (the model worker retries that batch in halves); anything else a generic 500 whose details go
    to the log only."""
    if isinstance(exc, ServiceError):
        return exc
    if is_out_of_memory(exc):
        return EngineUnavailable(f"{what} ran out of memory: {type(exc).__name__}", code=OUT_OF_MEMORY_CODE)
    logger.opt(exception=exc).error("{} failed", what)
    return InferenceError(f"{what} failed: {type(exc).__name__}")


def aligner_expected(settings: Settings) -> bool:
    """Whether a host built from `settings` will have a forced aligner: what engines hosted elsewhere assume
    until their host has loaded and says."""
    return bool(settings.forced_aligner_id) and settings.asr_engine != EngineName.fake

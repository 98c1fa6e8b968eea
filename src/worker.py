"""The model worker: owns the engine's life and turns queued batches into results.

- Lazy load on the first job (or at start with PRELOAD), warm-up after load, unload after
  IDLE_TIMEOUT seconds with no work, reload on the next job. `touch()` counts as work (streams call
  it), so a live stream keeps the model loaded.
- `_do_transcribe(kind, payloads)` is the one dispatch point into an engine. It runs on a single
  dedicated thread: engines are not thread-safe and must never block the event loop.
- The loop never dies: every exception is caught, turned into an error on the jobs of the batch that
  raised it, and the loop carries on. A failing batch is retried job by job so one bad input fails
  only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from asr_server.config import Settings
from asr_server.engines import AlignItem, Engine, TranscribeItem, Transcript
from asr_server.engines.base import MIN_AUDIO_SAMPLES, Abandoned
from asr_server.engines.hosting import EngineExecutor, engine_error
from asr_server.engines.oom import halves, is_out_of_memory, too_large
from asr_server.errors import EngineRestarting, EngineUnavailable, InferenceError, ServiceError
from asr_server.media import SAMPLE_RATE
from asr_server.metrics import Metrics
from asr_server.queue import Job, JobKind, PriorityInferQueue

# Seconds before a failed model load is tried again; in between, jobs fail fast with the reason.
LOAD_RETRY_COOLDOWN_S = 10.0
# While the engine restarts (gateway mode's worker process died), how often a loop looks whether it is back.
RESTART_POLL_S = 0.2


class EngineState(str, enum.Enum):
    unloaded = "unloaded"
    loading = "loading"
    ready = "ready"
    failed = "failed"


class ModelWorker:
    def __init__(
        self, settings: Settings, engine: Engine, queue: PriorityInferQueue, metrics: Metrics | None = None
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self.engine = engine
        self._queue = queue
        # An engine that batches continuously by itself (vLLM) declares `concurrency` > 1: it may be called
        # from that many threads at once, and that many loops keep that many batches in flight. Every
        # other engine has none: one engine thread, one batch at a time.
        self._executor = EngineExecutor(engine)
        self._concurrency = self._executor.threads
        self._tasks: list[asyncio.Task[None]] = []
        self._load_lock = asyncio.Lock()
        self.state = EngineState.unloaded
        self.load_error: str | None = None
        self._failed_at = 0.0
        self._last_activity = time.monotonic()
        self._busy = 0  # batches running
        self.load_seconds: float | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            *(asyncio.create_task(self._run_loop(), name="worker-loop") for _ in range(self._concurrency)),
            asyncio.create_task(self._idle_monitor(), name="worker-idle"),
        ]
        if self._settings.preload:
            try:
                await self.ensure_loaded()
            except ServiceError as exc:
                logger.error("preload failed: {}", exc.message)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._queue.fail_all(EngineUnavailable("the server is shutting down"))
        await self._in_thread(self.engine.unload)
        self._executor.shutdown()

    def touch(self) -> None:
        """Record activity so the idle timer does not unload the model (streams call this)."""
        self._last_activity = time.monotonic()

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._executor.run(fn, *args)

    async def ensure_loaded(self) -> None:
        """Load the engine if needed. Raises EngineUnavailable with the reason when it cannot."""
        if self.engine.loaded:
            return
        async with self._load_lock:
            if self.engine.loaded:
                return
            if self.state == EngineState.failed and time.monotonic() - self._failed_at < LOAD_RETRY_COOLDOWN_S:
                raise EngineUnavailable(f"the model is not available: {self.load_error}")
            self.state = EngineState.loading
            started = time.perf_counter()
            try:
                await self._in_thread(self.engine.load)
                if self._settings.warmup:
                    warm_started = time.perf_counter()
                    await self._in_thread(self.engine.warmup)
                    warmup_seconds = time.perf_counter() - warm_started
                    logger.info("warm-up took {:.2f} s", warmup_seconds)
                    if self._metrics:
                        self._metrics.warmup_seconds.set(warmup_seconds)
            except EngineRestarting:
                self.state = EngineState.loading  # not a failure: the jobs wait for the engine to come back
                raise
            except Exception as exc:
                self.state = EngineState.failed
                self._failed_at = time.monotonic()
                self.load_error = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
                logger.error("model load failed: {}", self.load_error)
                with contextlib.suppress(Exception):
                    await self._in_thread(self.engine.unload)
                raise EngineUnavailable(f"the model is not available: {self.load_error}") from exc
            self.load_seconds = time.perf_counter() - started
            if self._metrics:
                self._metrics.model_load_seconds.set(self.load_seconds)
            self.state = EngineState.ready
            self.load_error = None
            self.touch()

    async def _idle_monitor(self) -> None:
        timeout = self._settings.idle_timeout
        if timeout <= 0:
            return
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            idle_for = time.monotonic() - self._last_activity
            if self.engine.loaded and not self._busy and len(self._queue) == 0 and idle_for >= timeout:
                async with self._load_lock:
                    if self.engine.loaded and not self._busy:
                        logger.info("unloading the model after {:.0f} s idle", idle_for)
                        await self._in_thread(self.engine.unload)
                        self.state = EngineState.unloaded

    # --- the loop ----------------------------------------------------------------------------
    async def _run_loop(self) -> None:
        while True:
            s = self._settings
            batch = await self._queue.next_batch(s.max_batch_size, s.batch_wait_ms / 1000, s.batch_max_wait_ms / 1000)
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                for job in batch:
                    if not job.done:
                        job.future.set_exception(EngineUnavailable("the server is shutting down"))
                raise
            except BaseException as exc:  # the loop must survive anything but its own cancellation
                logger.opt(exception=exc).error("unexpected error in the worker loop")
                _fail(batch, InferenceError(f"internal error: {type(exc).__name__}"))
            finally:
                batch = []  # drop the finished jobs (and their audio) now, not when the next batch arrives

    async def _process(self, batch: list[Job]) -> None:
        self._busy += 1
        self.touch()
        try:
            kind = batch[0].kind
            try:
                await self.ensure_loaded()
                started = time.perf_counter()  # the batch's own time, not the model load before it
                outcomes = await self._run_with_isolation(kind, batch)
            except EngineRestarting as exc:
                # The work never started: back to the queue, to run on the new engine within its deadline.
                logger.warning("{}; {} jobs wait in the queue for it", exc.message, len(batch))
                self._queue.requeue(batch)
                await asyncio.sleep(RESTART_POLL_S)
                return
            except EngineUnavailable as exc:
                _fail(batch, exc)
                return
            elapsed = time.perf_counter() - started
            self._queue.record_service_time(elapsed, len(batch), batches_in_flight=self._busy)
            if self._metrics:
                self._observe(kind, batch, outcomes, elapsed)
            for job, outcome in zip(batch, outcomes, strict=True):
                if job.done:  # cancelled or timed out while running: the result is dropped
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)
        finally:
            self._busy -= 1
            self.touch()

    async def _run_with_isolation(self, kind: JobKind, batch: list[Job]) -> list[Any]:
        """Run the batch; if it raises, run each job alone so the error stays with the job that caused it."""
        payloads = [job.payload for job in batch]
        out_of_memory = False
        try:
            return await self._in_thread(self._do_transcribe, kind, payloads, lambda i: batch[i].done)
        except EngineRestarting:
            raise  # not this batch's fault: the caller puts it back in the queue
        except Exception as exc:
            out_of_memory = is_out_of_memory(exc)  # also forwarded by gateway mode's worker process (a 503)
            if isinstance(exc, EngineUnavailable) and not out_of_memory:
                # The engine itself is gone (e.g. the worker process died): every job of the batch gets the
                # 503 at once; jobs still queued run after the engine is back.
                return [exc] * len(batch)
            if len(batch) == 1:
                return [too_large(kind.value) if out_of_memory else engine_error(exc, kind.value)]
            how = "in halves" if out_of_memory else "one by one"
            logger.warning("batch of {} failed ({}); retrying {}", len(batch), type(exc).__name__, how)
        outcomes: list[Any] = []
        if out_of_memory:
            # Too big for the device, not a bad input: run each half (recursively, down to single jobs). This
            # runs after the except block, so the traceback holding the failed batch's tensors is gone.
            for half in halves(batch):
                live = any(not job.done for job in half)
                outcomes.extend(await self._run_with_isolation(kind, half) if live else [None] * len(half))
            return outcomes
        for job in batch:
            if job.done:
                outcomes.append(None)
                continue
            try:
                outcomes.extend(await self._in_thread(self._do_transcribe, kind, [job.payload]))
            except EngineRestarting:
                raise
            except Exception as exc:
                outcomes.append(engine_error(exc, kind.value))
        return outcomes

    def _observe(self, kind: JobKind, batch: list[Job], outcomes: list[Any], elapsed: float) -> None:
        assert self._metrics is not None
        metrics = self._metrics
        dispatched = time.monotonic() - elapsed
        for job in batch:
            metrics.queue_wait_seconds.labels(kind.value).observe(max(0.0, dispatched - job.enqueued_at))
        metrics.batch_size.labels(kind.value).observe(len(batch))
        metrics.inference_seconds.labels(kind.value).observe(elapsed)
        for outcome in outcomes:
            if isinstance(outcome, ServiceError):
                metrics.jobs_failed.labels(kind.value, outcome.code).inc()
        if kind == JobKind.transcribe:
            audio_seconds = sum(len(job.payload.audio) for job in batch) / SAMPLE_RATE
            metrics.audio_seconds.inc(audio_seconds)
            if audio_seconds > 0:
                metrics.real_time_factor.observe(elapsed / audio_seconds)

    def _do_transcribe(self, kind: JobKind, payloads: list[Any], abandoned: Abandoned | None = None) -> list[Any]:
        """The single dispatch point into the engine (runs on the engine thread).

        Clips shorter than MIN_AUDIO_SAMPLES never reach the engine (the feature extractor cannot frame
        them): they are answered as silence, an empty transcript or no aligned units. `abandoned(i)`: whether
        payload i's client has left (engines that can abort one request of a batch then do)."""
        runnable = [i for i, item in enumerate(payloads) if len(item.audio) >= MIN_AUDIO_SAMPLES]
        empty: Any = [] if kind == JobKind.align else Transcript(text="", language="")
        results: list[Any] = [empty] * len(payloads)
        if not runnable:
            return results
        if kind == JobKind.align:
            align_items: list[AlignItem] = [payloads[i] for i in runnable]
            outputs: list[Any] = self.engine.align(align_items)
        else:
            transcribe_items: list[TranscribeItem] = [payloads[i] for i in runnable]
            if abandoned is None:
                outputs = self.engine.transcribe(transcribe_items)
            else:
                outputs = self.engine.transcribe_abandonable(transcribe_items, lambda k: abandoned(runnable[k]))
        if len(outputs) != len(runnable):
            raise InferenceError(f"the engine returned {len(outputs)} results for {len(runnable)} items")
        for index, output in zip(runnable, outputs, strict=True):
            results[index] = output
        return results

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "loaded": self.engine.loaded,
            "load_error": self.load_error,
            "queue_depth": len(self._queue),
            **self.engine.describe(),
        }


def _fail(batch: list[Job], error: ServiceError) -> None:
    for job in batch:
        if not job.done:
            job.future.set_exception(error)

"""The worker and the service over a real queue, with scripted engines standing in for the model."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from asr_server.config import Settings
from asr_server.engines import Engine, TranscribeItem, Transcript
from asr_server.errors import EngineUnavailable, InferenceError, JobTimeout
from asr_server.media.audio import DecodedAudio
from asr_server.queue import PriorityInferQueue
from asr_server.services.transcription import TranscriptionService
from asr_server.worker import EngineState, ModelWorker


class ScriptedEngine(Engine):
    """Echoes each item's context; raises for context "boom"; sleeps for context "slow"."""

    name = "scripted"

    def __init__(self, fail_load: bool = False) -> None:
        self._loaded = False
        self.fail_load = fail_load
        self.loads = 0
        self.batch_sizes: list[int] = []
        self.seen: list[str] = []
        self.release_slow = threading.Event()

    def load(self) -> None:
        self.loads += 1
        if self.fail_load:
            raise OSError("model files not found")
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        self.batch_sizes.append(len(items))
        self.seen.extend(item.context for item in items)
        if any(item.context == "boom" for item in items):
            raise RuntimeError("engine exploded")
        if any(item.context == "slow" for item in items):
            self.release_slow.wait(5)
        return [Transcript(text=item.context, language=item.language or "English") for item in items]


def _audio() -> DecodedAudio:
    return DecodedAudio(samples=np.zeros(1600, dtype=np.float32))


async def _started(engine: Engine, **overrides: object) -> tuple[ModelWorker, TranscriptionService]:
    settings = Settings(asr_engine="fake", warmup=False, **overrides)
    queue = PriorityInferQueue(settings.queue_max, aging_s=settings.queue_aging_s)
    worker = ModelWorker(settings, engine, queue)
    await worker.start()
    return worker, TranscriptionService(settings, queue)


async def test_lazy_load_on_first_job_and_results_in_order() -> None:
    engine = ScriptedEngine()
    worker, service = await _started(engine, batch_wait_ms=50, max_batch_size=8)
    try:
        assert not engine.loaded
        results = await asyncio.gather(*(service.transcribe(_audio(), context=f"clip {i}") for i in range(5)))
        assert [r.text for r in results] == [f"clip {i}" for i in range(5)]
        assert engine.loads == 1 and worker.state == EngineState.ready
        assert max(engine.batch_sizes) > 1  # concurrent jobs were batched
    finally:
        await worker.stop()


async def test_failing_job_fails_alone_next_to_good_ones() -> None:
    engine = ScriptedEngine()
    worker, service = await _started(engine, batch_wait_ms=50)
    try:
        outcomes = await asyncio.gather(
            service.transcribe(_audio(), context="good 1"),
            service.transcribe(_audio(), context="boom"),
            service.transcribe(_audio(), context="good 2"),
            return_exceptions=True,
        )
        assert outcomes[0].text == "good 1" and outcomes[2].text == "good 2"
        assert isinstance(outcomes[1], InferenceError)
        assert "exploded" not in outcomes[1].message  # internals stay in the log
        # and the worker keeps serving
        assert (await service.transcribe(_audio(), context="after")).text == "after"
    finally:
        await worker.stop()


async def test_timed_out_job_answers_504_and_worker_serves_the_next() -> None:
    engine = ScriptedEngine()
    worker, service = await _started(engine, request_timeout=0.2)
    try:
        with pytest.raises(JobTimeout):
            await service.transcribe(_audio(), context="slow")
        engine.release_slow.set()
        assert (await service.transcribe(_audio(), context="next")).text == "next"
    finally:
        await worker.stop()


async def test_cancelled_request_is_never_run() -> None:
    engine = ScriptedEngine()
    worker, service = await _started(engine)
    try:
        blocker = asyncio.create_task(service.transcribe(_audio(), context="slow"))
        await asyncio.sleep(0.1)  # the worker is now busy with the slow job
        doomed = asyncio.create_task(service.transcribe(_audio(), context="never"))
        await asyncio.sleep(0.05)
        doomed.cancel()
        engine.release_slow.set()
        await blocker
        assert (await service.transcribe(_audio(), context="later")).text == "later"
        assert engine.seen == ["slow", "later"]  # "never" was dropped from the queue, not run
    finally:
        await worker.stop()


async def test_load_failure_is_503_with_reason_and_retried_after_cooldown(monkeypatch: pytest.MonkeyPatch) -> None:
    import asr_server.worker as worker_module

    monkeypatch.setattr(worker_module, "LOAD_RETRY_COOLDOWN_S", 0.0)
    engine = ScriptedEngine(fail_load=True)
    worker, service = await _started(engine)
    try:
        with pytest.raises(EngineUnavailable) as raised:
            await service.transcribe(_audio())
        assert "model files not found" in raised.value.message
        assert worker.state == EngineState.failed
        engine.fail_load = False
        assert (await service.transcribe(_audio(), context="ok")).text == "ok"
    finally:
        await worker.stop()


async def test_idle_timeout_unloads_and_next_job_reloads() -> None:
    engine = ScriptedEngine()
    worker, service = await _started(engine, idle_timeout=0.2)
    try:
        await service.transcribe(_audio(), context="one")
        for _ in range(50):
            if not engine.loaded:
                break
            await asyncio.sleep(0.05)
        assert not engine.loaded and worker.state == EngineState.unloaded
        assert (await service.transcribe(_audio(), context="two")).text == "two"
        assert engine.loads == 2
    finally:
        await worker.stop()


async def test_touch_keeps_the_model_loaded() -> None:
    engine = ScriptedEngine()
    worker, service = await _started(engine, idle_timeout=0.3)
    try:
        await service.transcribe(_audio(), context="one")
        for _ in range(12):  # 0.6 s of "stream activity", twice the idle timeout
            worker.touch()
            await asyncio.sleep(0.05)
        assert engine.loaded
    finally:
        await worker.stop()


class SlowLoadingEngine(ScriptedEngine):
    def load(self) -> None:
        threading.Event().wait(0.6)  # a model that takes a while to load
        super().load()


async def test_inference_time_does_not_include_the_model_load() -> None:
    """The first batch after a lazy load is timed from when the engine is ready: the inference histogram (and the
    Retry-After estimate fed from the same time) measure inference, not the load before it."""
    from asr_server.metrics import Metrics

    settings = Settings(asr_engine="fake", warmup=False)
    queue = PriorityInferQueue(settings.queue_max, aging_s=settings.queue_aging_s)
    metrics = Metrics()
    worker = ModelWorker(settings, SlowLoadingEngine(), queue, metrics)
    await worker.start()
    try:
        await TranscriptionService(settings, queue).transcribe(_audio(), context="first")
    finally:
        await worker.stop()
    inference = metrics.inference_seconds.labels("transcribe")
    total = next(s.value for m in inference.collect() for s in m.samples if s.name.endswith("_sum"))
    assert 0 <= total < 0.3, f"the first batch was timed at {total:.2f} s, the 0.6 s load included"

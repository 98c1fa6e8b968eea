"""PriorityInferQueue on its own: no HTTP, no engine."""

from __future__ import annotations

import asyncio

import pytest

from asr_server.errors import JobTimeout, QueueFull
from asr_server.queue import PRIORITY_HTTP, PRIORITY_STREAM, JobKind, PriorityInferQueue


async def test_lower_priority_number_first_and_fifo_within_priority() -> None:
    queue = PriorityInferQueue(max_size=10, aging_s=1000)
    http_a = queue.submit("http-a", priority=PRIORITY_HTTP, timeout=10)
    http_b = queue.submit("http-b", priority=PRIORITY_HTTP, timeout=10)
    ws = queue.submit("ws", priority=PRIORITY_STREAM, timeout=10)
    order = [(await queue.next_batch(1, 0))[0].payload for _ in range(3)]
    assert order == ["ws", "http-a", "http-b"]
    assert {http_a.done, http_b.done, ws.done} == {False}


async def test_aging_lets_a_long_waiting_upload_overtake_new_stream_work() -> None:
    queue = PriorityInferQueue(max_size=10, aging_s=0.05)
    queue.submit("old-http", priority=PRIORITY_HTTP, timeout=10)
    await asyncio.sleep(0.12)  # more than one priority level of aging
    queue.submit("new-ws", priority=PRIORITY_STREAM, timeout=10)
    first = await queue.next_batch(1, 0)
    assert first[0].payload == "old-http"


async def test_cancelled_job_is_dropped_and_never_returned() -> None:
    queue = PriorityInferQueue(max_size=10)
    gone = queue.submit("gone", priority=1, timeout=10)
    kept = queue.submit("kept", priority=1, timeout=10)
    gone.future.cancel()
    batch = await queue.next_batch(8, 0)
    assert [job.payload for job in batch] == ["kept"]
    assert kept.future.done() is False


async def test_expired_job_gets_504_and_queue_keeps_serving() -> None:
    queue = PriorityInferQueue(max_size=10)
    stale = queue.submit("stale", priority=1, timeout=0.01)
    await asyncio.sleep(0.03)
    fresh = queue.submit("fresh", priority=1, timeout=10)
    batch = await queue.next_batch(8, 0)
    assert [job.payload for job in batch] == ["fresh"]
    with pytest.raises(JobTimeout):
        stale.future.result()
    assert not fresh.done


async def test_full_queue_raises_429_with_retry_after_and_frees_up() -> None:
    queue = PriorityInferQueue(max_size=2)
    first = queue.submit("a", priority=1, timeout=10)
    queue.submit("b", priority=1, timeout=10)
    with pytest.raises(QueueFull) as raised:
        queue.submit("c", priority=1, timeout=10)
    assert raised.value.status_code == 429
    assert int(raised.value.headers["Retry-After"]) >= 1
    first.future.cancel()  # a cancelled job no longer counts against the bound
    queue.submit("c", priority=1, timeout=10)
    assert len(queue) == 2


async def _retry_after_when_full(batches_in_flight: int) -> int:
    queue = PriorityInferQueue(max_size=40)
    for _ in range(40):  # 8 jobs in 8 s per batch, long enough for the moving average to settle
        queue.record_service_time(8.0, 8, batches_in_flight=batches_in_flight)
    for i in range(40):
        queue.submit(i, priority=1, timeout=100)
    with pytest.raises(QueueFull) as raised:
        queue.submit("one more", priority=1, timeout=100)
    return int(raised.value.headers["Retry-After"])


async def test_retry_after_counts_batches_running_side_by_side() -> None:
    """40 queued jobs at 1 s each: 40 s with one batch at a time, a quarter with four in flight (vLLM)."""
    assert await _retry_after_when_full(1) == 40
    assert 10 <= await _retry_after_when_full(4) <= 11


async def test_batch_holds_only_compatible_jobs_up_to_the_limit() -> None:
    queue = PriorityInferQueue(max_size=20)
    for i in range(5):
        queue.submit(f"t{i}", priority=1, timeout=10, kind=JobKind.transcribe)
    queue.submit("a0", priority=1, timeout=10, kind=JobKind.align)
    batch = await queue.next_batch(3, 0)
    assert [job.payload for job in batch] == ["t0", "t1", "t2"]
    batch = await queue.next_batch(8, 0)
    assert [job.payload for job in batch] == ["t3", "t4"]
    batch = await queue.next_batch(8, 0)
    assert [job.payload for job in batch] == ["a0"]


async def test_batch_waits_for_late_jobs_within_the_window() -> None:
    queue = PriorityInferQueue(max_size=20)
    queue.submit("early", priority=1, timeout=10)

    async def late_submit() -> None:
        await asyncio.sleep(0.02)
        queue.submit("late", priority=1, timeout=10)

    submitter = asyncio.create_task(late_submit())
    batch = await queue.next_batch(4, 0.5)
    await submitter
    assert [job.payload for job in batch] == ["early", "late"]


async def _submit_every(queue: PriorityInferQueue, names: list[str], interval: float) -> None:
    for name in names:
        await asyncio.sleep(interval)
        queue.submit(name, priority=1, timeout=10)


async def test_batch_keeps_filling_while_jobs_keep_arriving() -> None:
    """A burst spread over 5x the gap still lands in one batch: each arrival extends the wait."""
    queue = PriorityInferQueue(max_size=20)
    queue.submit("j0", priority=1, timeout=10)
    names = [f"j{i}" for i in range(1, 6)]
    submitter = asyncio.create_task(_submit_every(queue, names, 0.05))
    batch = await queue.next_batch(8, batch_wait_s=0.2, max_wait_s=5.0)
    await submitter
    assert [job.payload for job in batch] == ["j0", *names]


async def test_batch_wait_is_capped_after_the_first_job() -> None:
    """Arrivals that never stop do not hold the batch past `max_wait_s`; the rest form the next batch."""
    queue = PriorityInferQueue(max_size=100)
    queue.submit("j0", priority=1, timeout=10)
    names = [f"j{i}" for i in range(1, 40)]
    submitter = asyncio.create_task(_submit_every(queue, names, 0.02))
    loop = asyncio.get_running_loop()
    started = loop.time()
    batch = await queue.next_batch(100, batch_wait_s=0.1, max_wait_s=0.3)
    waited = loop.time() - started
    await submitter  # 0.8 s of arrivals in all
    assert 0.25 <= waited < 0.6
    assert 2 <= len(batch) < 30
    following = await queue.next_batch(100, 0)
    assert [job.payload for job in batch + following] == ["j0", *names]


async def test_a_lone_job_waits_only_the_gap() -> None:
    queue = PriorityInferQueue(max_size=5)
    queue.submit("alone", priority=1, timeout=10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    batch = await queue.next_batch(8, batch_wait_s=0.05, max_wait_s=5.0)
    assert [job.payload for job in batch] == ["alone"]
    assert loop.time() - started < 1.0


async def test_next_batch_waits_for_work() -> None:
    queue = PriorityInferQueue(max_size=5)
    waiter = asyncio.create_task(queue.next_batch(4, 0))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    queue.submit("x", priority=1, timeout=10)
    batch = await asyncio.wait_for(waiter, 1)
    assert [job.payload for job in batch] == ["x"]

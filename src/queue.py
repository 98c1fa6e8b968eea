"""`PriorityInferQueue`: a bounded priority queue that hands the worker batches of compatible jobs.

- Lower priority number first (WebSocket work 0, HTTP 1), FIFO within a priority.
- Aging: a job's effective priority drops by one level per `aging_s` waited, so uploads are never
  starved by a steady stream of live audio. Effective priority `p - (now - t)/aging_s` orders jobs the
  same way as the static key `p + t/aging_s` (the `now` term is common to all), so a plain heap works.
- Bounded: `submit` raises `QueueFull` (429 with Retry-After) beyond `max_size` live jobs.
- A job whose future was cancelled (client gone) is dropped when popped and never run; one whose
  deadline has passed is failed with `JobTimeout` (504) instead of being run.
- `next_batch` returns jobs of the same kind, at most `max_batch_size`. While jobs keep arriving
  within `batch_wait_s` of each other it keeps waiting, for at most `max_wait_s` after the first: a burst
  of uploads (which reach the queue a few ms apart, each parsed and decoded in turn) fills one batch
  instead of being split into a short batch and a remainder, while a lone job waits only `batch_wait_s`.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

from asr_server.errors import JobTimeout, QueueFull

PRIORITY_STREAM = 0
PRIORITY_HTTP = 1
PRIORITY_JOB = 2  # pieces of background jobs (POST /v1/jobs): after live streams and waiting clients


class JobKind(str, enum.Enum):
    """What a job asks of the engine; only jobs of one kind are batched together."""

    transcribe = "transcribe"
    align = "align"


@dataclass(eq=False)
class Job:
    """One unit of work. `payload` is what the worker needs; `future` receives the result or error."""

    payload: Any
    kind: JobKind
    priority: int
    deadline: float  # time.monotonic() after which the job is answered with 504
    future: asyncio.Future[Any]
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.future.done()


@dataclass(order=True)
class _Entry:
    key: float
    seq: int
    job: Job = field(compare=False)


class PriorityInferQueue:
    def __init__(self, max_size: int, aging_s: float = 5.0) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._max_size = max_size
        self._aging_s = aging_s
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._not_empty = asyncio.Event()
        # Exponential moving average of seconds per job, for the Retry-After estimate.
        self._seconds_per_job = 1.0

    # --- producer side -----------------------------------------------------------------------
    def submit(
        self,
        payload: Any,
        *,
        priority: int,
        timeout: float,
        kind: JobKind = JobKind.transcribe,
        admitted: bool = False,
    ) -> Job:
        """Queue a job and return it; await `job.future` for the result. Raises QueueFull.

        `admitted`: a later piece of a request that was admitted already (a long file fed piece by piece,
        a bounded number at a time): never refused, so a file is not turned away by its own pieces."""
        self._drop_finished()
        if not admitted and len(self._heap) >= self._max_size:
            raise QueueFull(
                f"the server is busy: {len(self._heap)} jobs are queued; retry later",
                headers={"Retry-After": str(self.retry_after_seconds())},
            )
        now = time.monotonic()
        job = Job(
            payload=payload,
            kind=kind,
            priority=priority,
            deadline=now + timeout,
            future=asyncio.get_running_loop().create_future(),
            enqueued_at=now,
        )
        self._push(job)
        self._not_empty.set()
        return job

    def _push(self, job: Job) -> None:
        """Into the heap by effective priority (see the module docstring): priority + arrival / aging."""
        heapq.heappush(self._heap, _Entry(job.priority + job.enqueued_at / self._aging_s, next(self._seq), job))

    def retry_after_seconds(self) -> int:
        return max(1, math.ceil(self._seconds_per_job * max(1, len(self._heap))))

    def record_service_time(self, seconds: float, jobs: int, batches_in_flight: int = 1) -> None:
        """Feed the Retry-After estimate with how long a batch of `jobs` took, while `batches_in_flight`
        batches ran side by side (vLLM): the queue then drains that many times faster."""
        if jobs > 0:
            sample = seconds / (jobs * max(1, batches_in_flight))
            self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * sample

    def __len__(self) -> int:
        self._drop_finished()
        return len(self._heap)

    # --- consumer side -----------------------------------------------------------------------
    async def next_batch(self, max_batch_size: int, batch_wait_s: float, max_wait_s: float = 0.0) -> list[Job]:
        """Wait for work, then return 1..max_batch_size live jobs of the first job's kind: waiting
        up to `batch_wait_s` after the latest compatible arrival for another, and at most
        `max(batch_wait_s, max_wait_s)` after the first job."""
        while True:
            first = await self._pop_live()
            batch = [first]
            if max_batch_size > 1:
                batch.extend(self._take_compatible(first.kind, max_batch_size - 1))
                started = time.monotonic()
                deadline = started + max(batch_wait_s, max_wait_s)
                wait_until = min(deadline, started + batch_wait_s)
                while len(batch) < max_batch_size and (remaining := wait_until - time.monotonic()) > 0:
                    self._not_empty.clear()
                    try:
                        await asyncio.wait_for(self._not_empty.wait(), remaining)
                    except TimeoutError:
                        break
                    arrived = self._take_compatible(first.kind, max_batch_size - len(batch))
                    if arrived:
                        batch.extend(arrived)
                        wait_until = min(deadline, time.monotonic() + batch_wait_s)
            if self._heap:
                self._not_empty.set()
            live = [job for job in batch if not job.done]
            if live:
                return live

    async def _pop_live(self) -> Job:
        while True:
            while not self._heap:
                self._not_empty.clear()
                await self._not_empty.wait()
            job = heapq.heappop(self._heap).job
            if self._is_runnable(job):
                return job

    def _take_compatible(self, kind: JobKind, limit: int) -> list[Job]:
        """Remove up to `limit` runnable jobs of `kind`, in priority order."""
        if limit <= 0 or not self._heap:
            return []
        taken: list[Job] = []
        kept: list[_Entry] = []
        for entry in sorted(self._heap):
            job = entry.job
            if len(taken) < limit and job.kind == kind:
                if self._is_runnable(job):
                    taken.append(job)
            elif not job.done:
                kept.append(entry)
        heapq.heapify(kept)
        self._heap = kept
        return taken

    def _is_runnable(self, job: Job) -> bool:
        """False for cancelled/answered jobs (dropped) and expired ones (answered with 504 here)."""
        if job.done:
            return False
        if time.monotonic() >= job.deadline:
            job.future.set_exception(JobTimeout("the request timed out while waiting in the queue"))
            return False
        return True

    def _drop_finished(self) -> None:
        if any(entry.job.done for entry in self._heap):
            self._heap = [entry for entry in self._heap if not entry.job.done]
            heapq.heapify(self._heap)

    def requeue(self, jobs: list[Job]) -> None:
        """Put taken jobs back (the engine restarted before running them), in their original order: a job keeps
        its priority, its place by arrival time and its deadline. Never refused: they were admitted already."""
        for job in jobs:
            if not job.done:
                self._push(job)
        if self._heap:
            self._not_empty.set()

    def fail_all(self, error: BaseException) -> None:
        """Answer every queued job with `error` (shutdown)."""
        for entry in self._heap:
            if not entry.job.done:
                entry.job.future.set_exception(error)
        self._heap.clear()

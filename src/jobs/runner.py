"""The job runner: claims jobs from the store, runs them piece by piece, keeps their leases, sends webhooks.

- A job is claimed with a lease (JOBS_LEASE_SECONDS), renewed while it runs. When a server dies, its jobs' leases
  run out and any server sharing the store (this one after a restart, or another replica) takes them over.
- Every finished piece is stored at once; a job taken over skips the pieces stored already (`done`), so a
  piece is never transcribed twice, and resumes with the rest.
- A renewal that fails (the job was cancelled, or another server took it over) stops the run.
- Webhooks are delivered after the job ends, and again at start for any still pending (a crash mid-delivery):
  at least once, so receivers use the job id to ignore a repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from loguru import logger

from asr_server.config import Settings
from asr_server.errors import ServiceError
from asr_server.jobs.records import JobRecord, JobState, PieceRecord
from asr_server.jobs.store import JobStore
from asr_server.jobs.webhooks import deliver
from asr_server.media.audio import open_audio_stream
from asr_server.media.pieces import iter_pieces
from asr_server.queue import PRIORITY_JOB
from asr_server.services.long_media import LongMediaPipeline, outcome_from_json, outcome_to_json
from asr_server.services.subtitles import PieceOutcome, SubtitleMode

# How often an idle runner looks for jobs submitted elsewhere (other replicas) or leases run out.
POLL_SECONDS = 1.0
# How often finished jobs past their retention are removed.
SWEEP_SECONDS = 60.0
MAX_WEBHOOK_BACKOFF_S = 300.0


def worker_name() -> str:
    """Unique per process start: a restarted server must not mistake its predecessor's leases for its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        pipeline: LongMediaPipeline,
        describe: Callable[[JobRecord], dict[str, Any]],  # the job's public JSON (the webhook's body)
    ) -> None:
        self._settings = settings
        self._store = store
        self._pipeline = pipeline
        self._describe = describe
        self.worker = worker_name()
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopped: set[str] = set()  # jobs whose run this server stopped (cancelled, or no longer ours)
        self._background: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(follow_redirects=False)

    # --- life ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._loops = [asyncio.ensure_future(self._claim_loop()), asyncio.ensure_future(self._sweep_loop())]
        self._spawn(self._redeliver_pending())

    async def stop(self) -> None:
        """Stop claiming, stop the jobs running here and give them back to the queue (resumed after the last
        stored piece by whichever server claims them next), and stop delivering webhooks (still pending: sent at
        the next start)."""
        held = list(self._running)
        tasks = [*self._loops, *self._running.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job_id in held:
            try:
                await asyncio.to_thread(self._store.release, job_id, self.worker)
            except Exception as exc:  # its lease will run out instead
                logger.opt(exception=exc).warning("could not give job {} back to the queue", job_id)
        await self._client.aclose()

    def wake(self) -> None:
        """A job was submitted here: look now rather than at the next poll."""
        self._wake.set()

    def cancel_local(self, job_id: str) -> None:
        """Stop the job's run at once if this server runs it (others notice at their next renewal)."""
        task = self._running.get(job_id)
        if task is not None:
            self._stopped.add(job_id)
            task.cancel()

    def deliver_webhook_soon(self, job_id: str) -> None:
        self._spawn(self._deliver_webhook(job_id))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- claiming -----------------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while True:
            job = None
            if len(self._running) < self._settings.jobs_concurrency:
                try:
                    job = await asyncio.to_thread(
                        self._store.claim,
                        self.worker,
                        lease_seconds=self._settings.jobs_lease_seconds,
                        retention_seconds=self._settings.jobs_retention_hours * 3600,
                    )
                except Exception as exc:  # a database hiccup must not end the loop
                    logger.opt(exception=exc).error("claiming a job failed")
            if job is not None:
                task = asyncio.ensure_future(self._run_guarded(job))
                self._running[job.id] = task
                task.add_done_callback(lambda _, job_id=job.id: self._job_done(job_id))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _job_done(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        self._wake.set()  # a slot is free

    # --- running ------------------------------------------------------------------------------------------
    async def _run_guarded(self, job: JobRecord) -> None:
        logger.info("job {} started (attempt {})", job.id, job.attempts)
        run = asyncio.ensure_future(self._run(job))
        keeper = asyncio.ensure_future(self._keep_lease(job.id, run))
        state, error = JobState.succeeded, None
        try:
            await run
        except asyncio.CancelledError:
            if job.id not in self._stopped:  # shutdown: the job stays running under its lease, to be resumed
                raise
            logger.info("job {} stopped: cancelled, or taken over by another server", job.id)
            return
        except ServiceError as exc:
            state, error = JobState.failed, exc.envelope()["error"]
        except Exception as exc:
            logger.opt(exception=exc).error("job {} failed", job.id)
            state = JobState.failed
            error = {
                "message": f"internal error: {type(exc).__name__}",
                "type": "server_error",
                "code": "internal_error",
            }
        finally:
            keeper.cancel()
            self._stopped.discard(job.id)
        expires_at = time.time() + self._settings.jobs_retention_hours * 3600
        finished = await asyncio.to_thread(
            self._store.finish, job.id, self.worker, state, error=error, expires_at=expires_at
        )
        logger.info("job {} {}", job.id, state.value if finished else "finished, but was no longer ours")
        if finished:
            await self._deliver_webhook(job.id)

    async def _keep_lease(self, job_id: str, run: asyncio.Future[Any]) -> None:
        lease = self._settings.jobs_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                held = await asyncio.to_thread(self._store.renew, job_id, self.worker, lease_seconds=lease)
            except Exception as exc:
                logger.opt(exception=exc).warning("renewing job {}'s lease failed; trying again", job_id)
                continue
            if not held:
                self._stopped.add(job_id)
                run.cancel()
                return

    async def _run(self, job: JobRecord) -> None:
        options = job.options
        records = await asyncio.to_thread(self._store.pieces, job.id)
        done = {record.index: outcome_from_json(record.data) for record in records}
        done_seconds = sum(o.chunk.end - o.chunk.start for o in done.values())
        stream = await asyncio.to_thread(
            open_audio_stream, Path(job.media_path), job.filename, max_seconds=self._settings.max_audio_seconds
        )
        with stream:

            async def store_piece(outcome: PieceOutcome) -> None:
                nonlocal done_seconds
                chunk = outcome.chunk
                record = PieceRecord(job.id, chunk.index, chunk.start, chunk.end, outcome_to_json(outcome))
                await asyncio.to_thread(self._store.put_piece, record)
                done_seconds += chunk.end - chunk.start
                await asyncio.to_thread(
                    self._store.set_progress,
                    job.id,
                    self.worker,
                    done_seconds=done_seconds,
                    duration=max(stream.declared_duration or 0.0, stream.decoded_seconds) or None,
                )

            await self._pipeline.run(
                iter_pieces(stream, self._pipeline.piece_seconds),
                language=options.get("language"),
                context=options.get("prompt") or "",
                mode=SubtitleMode(options["subtitle_mode"]),
                priority=PRIORITY_JOB,
                measure_speech=True,
                admit_first=False,
                done=done,
                on_piece=store_piece,
            )
            duration = stream.decoded_seconds
        await asyncio.to_thread(self._store.set_progress, job.id, self.worker, done_seconds=duration, duration=duration)

    # --- webhooks -----------------------------------------------------------------------------------------
    async def _redeliver_pending(self) -> None:
        try:
            pending = await asyncio.to_thread(self._store.pending_webhooks)
        except Exception as exc:
            logger.opt(exception=exc).error("reading pending webhooks failed")
            return
        for job in pending:
            self.deliver_webhook_soon(job.id)

    async def _deliver_webhook(self, job_id: str) -> None:
        job = await asyncio.to_thread(self._store.get, job_id)
        if job is None or not job.webhook_url or job.webhook_state != "pending":
            return
        secret = self._settings.webhook_secret.get_secret_value().encode() or None

        async def record(attempt: int, error: str | None) -> None:
            await asyncio.to_thread(
                self._store.set_webhook,
                job_id,
                state="pending" if error else "delivered",
                attempts=attempt,
                error=error,
                delivered_at=None if error else time.time(),
            )

        delivery = await deliver(
            self._client,
            job.webhook_url,
            self._describe(job),
            event=f"job.{job.state.value}",
            secret=secret,
            max_attempts=self._settings.webhook_max_attempts,
            backoff_s=self._settings.webhook_backoff_seconds,
            max_backoff_s=MAX_WEBHOOK_BACKOFF_S,
            on_attempt=record,
        )
        if not delivery.delivered:
            logger.warning("job {}'s webhook failed after {} attempts: {}", job_id, delivery.attempts, delivery.error)
            await asyncio.to_thread(
                self._store.set_webhook, job_id, state="failed", attempts=delivery.attempts, error=delivery.error
            )

    # --- retention ----------------------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                logger.opt(exception=exc).error("removing expired jobs failed")
            await asyncio.sleep(min(SWEEP_SECONDS, self._settings.jobs_retention_hours * 3600))

    async def sweep(self) -> int:
        """Remove finished jobs past their retention, with their media. Returns how many."""
        expired = await asyncio.to_thread(self._store.expired)
        for job in expired:
            await asyncio.to_thread(Path(job.media_path).unlink, missing_ok=True)
            await asyncio.to_thread(self._store.delete, job.id)
        if expired:
            logger.info("removed {} expired job(s)", len(expired))
        return len(expired)

"""What the jobs API asks of jobs: submit one, look it up, list, cancel, read its result; and the runner's life.

The store is opened when the first job is submitted, or at start when it exists already (jobs to resume), so a
server that never takes a job writes nothing to disk. Media is kept as `DATA_DIR/media/<job id><ext>`.
A job belongs to the API key that submitted it: another key sees it as missing (404), never as forbidden, so
ids cannot be probed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from asr_server.config import Settings
from asr_server.errors import InvalidRequest, NotFound, PayloadTooLarge, QueueFull
from asr_server.jobs.records import TERMINAL_STATES, JobRecord, JobState
from asr_server.media.audio import file_extension, open_audio_stream
from asr_server.services.long_media import LongMediaPipeline, outcome_from_json
from asr_server.services.subtitles import SubtitleMode, TimedTranscription, assemble
from asr_server.subtitle import CueRules

if TYPE_CHECKING:
    from asr_server.jobs.runner import JobRunner
    from asr_server.jobs.store import JobStore

ANONYMOUS = "anonymous"


class JobNotFinished(InvalidRequest):
    status_code = 409
    code = "job_not_finished"


def job_json(job: JobRecord, now: float | None = None) -> dict[str, Any]:
    """The job as GET /v1/jobs/{id} shows it (and as its webhook carries it)."""
    now = time.time() if now is None else now
    total = job.duration
    eta = None
    if job.state == JobState.running and total and job.started_at and 0 < job.done_seconds < total:
        rate = job.done_seconds / max(1e-3, now - job.started_at)  # audio seconds per second
        eta = round((total - job.done_seconds) / rate, 1)
    webhook = None
    if job.webhook_url:
        webhook = {
            "url": job.webhook_url,
            "state": job.webhook_state or "waiting",
            "attempts": job.webhook_attempts,
            "last_error": job.webhook_error,
            "delivered_at": _seconds(job.webhook_delivered_at),
        }
    return {
        "id": job.id,
        "object": "transcription.job",
        "status": job.state.value,
        "filename": job.filename,
        "created_at": _seconds(job.created_at),
        "started_at": _seconds(job.started_at),
        "finished_at": _seconds(job.finished_at),
        "expires_at": _seconds(job.expires_at),
        "progress": {
            "done_seconds": round(job.done_seconds, 3),
            "total_seconds": round(total, 3) if total else None,
            "fraction": round(min(1.0, job.done_seconds / total), 4) if total else 0.0,
            "eta_seconds": eta,
        },
        "options": job.options,
        "error": job.error,
        "webhook": webhook,
    }


def _seconds(value: float | None) -> int | None:
    return int(value) if value is not None else None


class JobService:
    def __init__(self, settings: Settings, pipeline: LongMediaPipeline) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._store: JobStore | None = None
        self._runner: JobRunner | None = None
        self._opening = asyncio.Lock()

    @property
    def media_dir(self) -> Path:
        return self._settings.data_dir / "media"

    # --- life ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Resume jobs at start when the store exists (a restart); otherwise wait for the first job."""
        url = self._settings.resolved_jobs_database_url()
        if not url.startswith("sqlite") or (self._settings.data_dir / "jobs.db").exists():
            await self._ensure_open()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.stop()
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
        self._store = self._runner = None

    async def _ensure_open(self) -> JobStore:
        async with self._opening:
            if self._store is None:
                from asr_server.jobs.runner import JobRunner  # sqlalchemy and httpx's client: only once jobs exist
                from asr_server.jobs.store import JobStore

                self.media_dir.mkdir(parents=True, exist_ok=True)
                url = self._settings.resolved_jobs_database_url()
                self._store = await asyncio.to_thread(JobStore, url)
                self._runner = JobRunner(self._settings, self._store, self._pipeline, job_json)
                self._runner.start()
        return self._store

    # --- the API's calls ----------------------------------------------------------------------------------
    async def create(
        self,
        *,
        owner: str,
        upload: BinaryIO,
        filename: str | None,
        size: int,
        options: dict[str, Any],
        webhook_url: str | None,
    ) -> JobRecord:
        """Store the upload and queue the job. Raises 429 past the key's active jobs, 413 past its stored media,
        and the decoder's 4xx when the file is not audio (nothing is kept then)."""
        store = await self._ensure_open()
        usage = await asyncio.to_thread(store.usage, owner)
        if usage.active_jobs >= self._settings.jobs_max_active_per_key:
            raise QueueFull(
                f"{usage.active_jobs} jobs of this key are queued or running (JOBS_MAX_ACTIVE_PER_KEY); "
                "retry when one has finished",
                code="too_many_jobs",
                headers={"Retry-After": "30"},
            )
        limit = int(self._settings.jobs_max_media_mb_per_key * 1024 * 1024)
        if usage.media_bytes + size > limit:
            raise PayloadTooLarge(
                f"this key's stored media would pass {self._settings.jobs_max_media_mb_per_key:g} MiB "
                "(JOBS_MAX_MEDIA_MB_PER_KEY); delete finished jobs or wait for their retention to end",
                param="file",
                code="storage_limit",
            )
        job_id = f"job_{uuid.uuid4().hex}"
        extension = file_extension(filename)
        path = (self.media_dir / (job_id + (f".{extension}" if extension.isalnum() else ""))).resolve()
        try:
            await asyncio.to_thread(_save, upload, path)
            declared = await asyncio.to_thread(self._check_audio, path, filename)
            job = JobRecord(
                id=job_id,
                owner=owner,
                filename=filename or "upload",
                media_path=str(path),
                media_bytes=path.stat().st_size,
                options=options,
                webhook_url=webhook_url,
                duration=declared,
            )
            job = await asyncio.to_thread(store.insert, job)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        assert self._runner is not None
        self._runner.wake()
        return job

    def _check_audio(self, path: Path, filename: str | None) -> float | None:
        """Refuse what is not audio, or declares more than MAX_AUDIO_SECONDS, now rather than in the run.
        Returns the length the file declares (the job's progress total until it is decoded to the end)."""
        with open_audio_stream(path, filename, max_seconds=self._settings.max_audio_seconds) as stream:
            next(iter(stream), None)
            return stream.declared_duration

    async def get(self, job_id: str, owner: str | None) -> JobRecord:
        """The job, if `owner` may see it (None: any owner)."""
        store = await self._ensure_open()
        job = await asyncio.to_thread(store.get, job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"no job {job_id!r}", param="job_id", code="job_not_found")
        return job

    async def list(self, owner: str | None, limit: int) -> list[JobRecord]:
        store = await self._ensure_open()
        return await asyncio.to_thread(store.list_jobs, owner, limit=limit)

    async def cancel(self, job_id: str, owner: str | None) -> JobRecord:
        job = await self.get(job_id, owner)
        if job.state in TERMINAL_STATES:
            return job
        store = await self._ensure_open()
        expires_at = time.time() + self._settings.jobs_retention_hours * 3600
        cancelled = await asyncio.to_thread(store.cancel, job_id, expires_at=expires_at)
        assert self._runner is not None and cancelled is not None
        self._runner.cancel_local(job_id)
        if cancelled.webhook_state == "pending":
            self._runner.deliver_webhook_soon(job_id)
        return cancelled

    async def result(self, job: JobRecord, rules: CueRules) -> TimedTranscription:
        """The finished job's timed transcription, from its stored pieces (the model is not run again)."""
        if job.state != JobState.succeeded:
            raise JobNotFinished(f"the job is {job.state.value}; its result exists once it has succeeded")
        store = await self._ensure_open()
        records = await asyncio.to_thread(store.pieces, job.id)
        outcomes = [outcome_from_json(record.data) for record in records]
        return await assemble(
            outcomes,
            job.duration or 0.0,
            mode=SubtitleMode(job.options["subtitle_mode"]),
            rules=rules,
            language=job.options.get("language"),
        )

    async def sweep(self) -> int:
        await self._ensure_open()
        assert self._runner is not None
        return await self._runner.sweep()


def _save(upload: BinaryIO, path: Path) -> None:
    upload.seek(0)
    partial = path.with_name(path.name + ".part")
    with partial.open("wb") as out:
        shutil.copyfileobj(upload, out, 1024 * 1024)
    partial.rename(path)

"""The jobs API as the command line uses it: submit (streamed from disk, retried on 429/503), follow the
events stream, fetch the result; every other answer an `ApiError` with the envelope's message."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from asr_server.client.files import UsageError

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ATTACHABLE = frozenset({"queued", "running", "succeeded"})  # a failed or cancelled job is submitted again
# The upload's answer comes once the server has stored the file and checked that it is audio.
UPLOAD_TIMEOUT = httpx.Timeout(30.0, read=600.0, write=600.0)
UPLOAD_TRIES = 3  # connection errors while uploading
# The events stream sends a comment every 15 s, so a minute of silence means the connection is gone.
EVENTS_TIMEOUT = httpx.Timeout(30.0, read=60.0)
LOST_CONTACT_SECONDS = 120.0  # stop following a job after this long without reaching the server
MAX_RETRY_AFTER_SECONDS = 60.0


class ApiError(Exception):
    """An answer other than the one expected, with the error envelope's message."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["message"]), error.get("code"))
        except (ValueError, KeyError, TypeError):
            text = response.text.strip()[:300]
            return cls(response.status_code, f"HTTP {response.status_code}" + (f": {text}" if text else ""))


@dataclass(frozen=True)
class Target:
    base_url: str
    identity: str  # what the state file keys jobs by: the URL, or the in-process service's store
    api_key: str | None


class _CountingReader:
    """A binary file that reports how much of it has been read (the upload's progress) as httpx streams it."""

    def __init__(self, handle: BinaryIO, on_read: Callable[[float], None]) -> None:
        self._handle = handle
        self._size = os.fstat(handle.fileno()).st_size
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._on_read(self._handle.tell() / self._size if self._size else 1.0)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def fileno(self) -> int:
        return self._handle.fileno()


async def _sse_jobs(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The job objects carried by a job's events stream (`data: {"type": ..., "job": {...}}`)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                if name == "data":
                    data.append(value[1:] if value.startswith(" ") else value)
            continue
        if data:
            try:
                payload = json.loads("\n".join(data))
            except ValueError:
                payload = None
            data = []
            if isinstance(payload, dict) and isinstance(payload.get("job"), dict):
                yield payload["job"]


class JobsClient:
    """The jobs API as this command uses it."""

    def __init__(self, target: Target) -> None:
        headers = {"User-Agent": "asr-server-transcribe"}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        self._http = httpx.AsyncClient(base_url=target.base_url, headers=headers, timeout=httpx.Timeout(30.0))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def check(self) -> None:
        """Fail early, as a usage error, when the server cannot be reached, refuses the key or has no jobs API."""
        try:
            response = await self._http.get("/v1/jobs", params={"limit": 1})
        except httpx.HTTPError as exc:
            raise UsageError(f"cannot reach {self._http.base_url}: {exc or type(exc).__name__}") from exc
        if response.status_code == 200:
            return
        error = ApiError.from_response(response)
        if response.status_code == 404:
            raise UsageError(f"{self._http.base_url} has no jobs API (GET /v1/jobs: {error.message})")
        if response.status_code in (401, 403):
            raise UsageError(f"{error.message} (give the key with --api-key or ASR_API_KEY)")
        raise error

    async def submit(
        self,
        source: Path,
        form: dict[str, str],
        on_upload: Callable[[float], None],
        on_wait: Callable[[str], None],
    ) -> dict[str, Any]:
        """Upload `source` (streamed from disk) as a job; the job as the 202 answer gives it. Waits and tries
        again while the server is busy (429/503: Retry-After), and after a dropped connection (a few times)."""
        delay, failures = 1.0, 0
        while True:
            with source.open("rb") as handle:
                upload = _CountingReader(handle, on_upload)
                try:
                    response = await self._http.post(
                        "/v1/jobs", data=form, files={"file": (source.name, upload)}, timeout=UPLOAD_TIMEOUT
                    )
                except httpx.TransportError as exc:
                    failures += 1
                    if failures >= UPLOAD_TRIES:
                        raise ApiError(0, f"upload failed: {exc or type(exc).__name__}") from exc
                    on_wait(f"upload interrupted ({exc or type(exc).__name__}); trying again")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
            if response.status_code in (200, 201, 202):
                return response.json()
            if response.status_code in (429, 503):
                error = ApiError.from_response(response)
                wait = _retry_after(response, delay)
                on_wait(f"server busy ({error.message}); trying again in {wait:.0f} s")
                await asyncio.sleep(wait)
                delay = min(delay * 2, MAX_RETRY_AFTER_SECONDS)
                continue
            raise ApiError.from_response(response)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The job, or None when the server no longer has it (expired, deleted, another key's)."""
        response = await self._http.get(f"/v1/jobs/{job_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiError.from_response(response)
        return response.json()

    async def follow(self, job_id: str, on_update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Listen to the job's events until it ends; the last job object. A dropped stream is opened again; after
        LOST_CONTACT_SECONDS without the server, ApiError (the job may still run: a rerun re-attaches)."""
        lost_since: float | None = None
        delay = 0.5
        while True:
            try:
                async with self._http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=EVENTS_TIMEOUT) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise ApiError.from_response(response)
                    lost_since, delay = None, 0.5
                    async for job in _sse_jobs(response):
                        on_update(job)
                        if job.get("status") in TERMINAL:
                            return job
                job = await self.get(job_id)  # the stream ended before the job did: look, then listen again
                if job is None:
                    raise ApiError(404, f"the server no longer has job {job_id}")
                on_update(job)
                if job.get("status") in TERMINAL:
                    return job
            except (httpx.TransportError, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500:
                    raise
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > LOST_CONTACT_SECONDS:
                    reason = exc.message if isinstance(exc, ApiError) else str(exc) or type(exc).__name__
                    raise ApiError(
                        0, f"lost contact with the server ({reason}); job {job_id} may still run: run again"
                    ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def result(self, job_id: str, response_format: str) -> bytes:
        response = await self._http.get(f"/v1/jobs/{job_id}/result", params={"format": response_format})
        if response.status_code != 200:
            raise ApiError.from_response(response)
        return response.content


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        seconds = float(response.headers.get("retry-after", default))
    except ValueError:
        seconds = default
    return max(0.5, min(seconds, MAX_RETRY_AFTER_SECONDS))


# --- the display -------------------------------------------------------------------------------------------------

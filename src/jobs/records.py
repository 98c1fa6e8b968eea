"""A job and its pieces as plain values: what the store keeps and the API shows (no database imports here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


@dataclass
class JobRecord:
    id: str
    owner: str  # API key id, or "anonymous"
    filename: str
    media_path: str  # absolute path of the stored upload
    media_bytes: int
    options: dict[str, Any]  # the request's form, JSON-serialisable
    state: JobState = JobState.queued
    created_at: float = 0.0  # unix seconds; set by insert when 0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None  # when the job and its media may be removed
    duration: float | None = None  # total audio seconds, once known
    done_seconds: float = 0.0  # audio seconds finished
    error: dict[str, Any] | None = None  # the error envelope's "error" object
    attempts: int = 0  # times claimed
    lease_owner: str | None = None
    lease_until: float | None = None
    webhook_url: str | None = None
    webhook_state: str | None = None  # None (no webhook) | "pending" | "delivered" | "failed"
    webhook_attempts: int = 0
    webhook_error: str | None = None
    webhook_delivered_at: float | None = None


@dataclass(frozen=True)
class PieceRecord:
    job_id: str
    index: int
    start: float  # seconds
    end: float
    data: dict[str, Any]  # JSON: the piece's transcript, words, timing mode...


@dataclass(frozen=True)
class OwnerUsage:
    active_jobs: int  # queued + running
    media_bytes: int  # stored media of jobs not yet removed

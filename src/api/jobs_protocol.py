"""Wire models of the jobs API (POST/GET/DELETE /v1/jobs): the job object, its progress and webhook, the list."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

from asr_server.api.protocol import _ERRORS, _TEXT_BODIES, ErrorEnvelope


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ResultFormat(str, Enum):
    """What GET /v1/jobs/{id}/result can give, from the stored pieces, without running the model again."""

    json = "json"
    text = "text"
    verbose_json = "verbose_json"
    srt = "srt"
    vtt = "vtt"


class JobProgress(BaseModel):
    done_seconds: float = Field(description="Audio seconds transcribed")
    total_seconds: float | None = Field(description="The audio's length (the header's until decoded to the end)")
    fraction: float = Field(ge=0, le=1)
    eta_seconds: float | None = Field(description="Estimated seconds left while running, from the pace so far")


class JobWebhook(BaseModel):
    url: str
    state: Literal["waiting", "pending", "delivered", "failed"] = Field(
        description="waiting: the job has not ended; pending: being delivered (retried with backoff)"
    )
    attempts: int
    last_error: str | None
    delivered_at: int | None


class JobObject(BaseModel):
    id: str
    object: Literal["transcription.job"] = "transcription.job"
    status: JobStatus
    filename: str
    created_at: int
    started_at: int | None
    finished_at: int | None
    expires_at: int | None = Field(description="When the job, its result and its media are removed")
    progress: JobProgress
    options: dict[str, Any] = Field(description="The request's options, as the job runs them")
    error: dict[str, Any] | None = Field(description="The error envelope's error object, when the job failed")
    webhook: JobWebhook | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]


JOB_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorEnvelope, "description": "no such job (or another API key's)"},
    **{status: error for status, error in _ERRORS.items() if status in (400, 401)},
}
JOB_CREATE_RESPONSES: dict[int | str, dict[str, object]] = {
    **{status: error for status, error in _ERRORS.items() if status in (400, 401, 413, 415, 429)},
}
JOB_RESULT_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "json or verbose_json; text, srt and vtt as plain bodies", "content": _TEXT_BODIES},
    409: {"model": ErrorEnvelope, "description": "the job has not succeeded"},
    **JOB_RESPONSES,
}

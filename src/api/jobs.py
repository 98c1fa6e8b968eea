"""The jobs API: POST /v1/jobs (202 with the job), GET /v1/jobs, GET /v1/jobs/{id}, its result in any format,
its progress as Server-Sent Events, and DELETE /v1/jobs/{id} (cancel). See docs/jobs.md."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from asr_server.api.dependencies import ServicesDep
from asr_server.api.formats import SSE_HEADERS, format_plain, format_timed
from asr_server.api.jobs_protocol import (
    JOB_CREATE_RESPONSES,
    JOB_RESPONSES,
    JOB_RESULT_RESPONSES,
    JobList,
    JobObject,
    ResultFormat,
)
from asr_server.api.protocol import ResponseFormat, TimestampGranularity
from asr_server.api.security import KEY_ID_STATE
from asr_server.api.uploads import CueLayout, CueLayoutForm, resolve_mode
from asr_server.errors import InvalidField
from asr_server.jobs.records import TERMINAL_STATES, JobRecord
from asr_server.jobs.service import ANONYMOUS, job_json
from asr_server.jobs.webhooks import check_webhook_url
from asr_server.services.subtitles import SubtitleMode
from asr_server.services.transcription import TranscriptionResult
from asr_server.streaming.protocol import MAX_PROMPT_CHARS
from asr_server.text.languages import normalize_language

router = APIRouter(tags=["jobs"])

# How often the events stream reads the job (from the shared store: another replica may be running it).
EVENTS_POLL_SECONDS = 0.5
# Comments keep proxies from closing a quiet stream.
EVENTS_KEEPALIVE_SECONDS = 15.0


def owner_of(request: Request) -> str:
    return getattr(request.state, KEY_ID_STATE, None) or ANONYMOUS


def job_object(job: JobRecord) -> JobObject:
    return JobObject.model_validate(job_json(job))


@router.post(
    "/v1/jobs",
    status_code=202,
    summary="Submit a long file as a job: 202 at once, then poll, stream its events, or get a webhook",
    responses=JOB_CREATE_RESPONSES,
)
async def create_job(
    request: Request,
    services: ServicesDep,
    layout: CueLayoutForm,
    file: Annotated[UploadFile, File(description="Audio or video file: wav, flac, mp3, m4a, mp4, mkv, webm, ...")],
    model: Annotated[str | None, Form(description="Accepted for compatibility; the served model is used.")] = None,
    language: Annotated[str | None, Form(description="ISO-639-1 code ('en', 'zh') or name; empty = detect")] = None,
    prompt: Annotated[
        str | None, Form(max_length=MAX_PROMPT_CHARS, description="Context text that helps the model (names, terms)")
    ] = None,
    response_format: Annotated[
        ResultFormat, Form(description="The result's default format; GET .../result?format= gives any other")
    ] = ResultFormat.json,
    subtitle_mode: Annotated[
        SubtitleMode | None, Form(description="Timing: accurate (forced aligner) or fast (heuristic)")
    ] = None,
    webhook_url: Annotated[
        str | None, Form(description="Called (POST, the job's JSON, signed) when the job ends")
    ] = None,
    diarize: Annotated[bool, Form(description="Not available for jobs yet (400 when true)")] = False,
) -> JSONResponse:
    if diarize:
        raise InvalidField(
            "jobs do not diarize yet; use /v1/audio/transcriptions with diarize=true for audio up to "
            "LONG_AUDIO_SECONDS",
            param="diarize",
        )
    if webhook_url:
        try:
            webhook_url = check_webhook_url(webhook_url)
        except ValueError as exc:
            raise InvalidField(str(exc), param="webhook_url") from exc
    layout.rules()  # a layout that cannot be honoured is refused now, not when the result is asked for
    options = {
        "language": normalize_language(language),
        "prompt": prompt or "",
        "response_format": response_format.value,
        "subtitle_mode": resolve_mode(services, subtitle_mode).value,
        "layout": layout.model_dump(exclude_none=True),
    }
    job = await services.jobs.create(
        owner=owner_of(request),
        upload=file.file,
        filename=file.filename,
        size=file.size or 0,
        options=options,
        webhook_url=webhook_url or None,
    )
    return JSONResponse(
        job_object(job).model_dump(mode="json"), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )


@router.get("/v1/jobs", summary="The caller's jobs, newest first", responses=JOB_RESPONSES)
async def list_jobs(
    request: Request, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> JobList:
    jobs = await services.jobs.list(owner_of(request), limit)
    return JobList(data=[job_object(job) for job in jobs])


@router.get("/v1/jobs/{job_id}", summary="A job: status, progress, time left, error, webhook", responses=JOB_RESPONSES)
async def get_job(job_id: str, request: Request, services: ServicesDep) -> JobObject:
    return job_object(await services.jobs.get(job_id, owner_of(request)))


@router.delete("/v1/jobs/{job_id}", summary="Cancel a job (a finished one is left as it is)", responses=JOB_RESPONSES)
async def cancel_job(job_id: str, request: Request, services: ServicesDep) -> JobObject:
    return job_object(await services.jobs.cancel(job_id, owner_of(request)))


@router.get(
    "/v1/jobs/{job_id}/result",
    summary="A succeeded job's result in any format (the model does not run again)",
    responses=JOB_RESULT_RESPONSES,
)
async def job_result(
    job_id: str,
    request: Request,
    services: ServicesDep,
    format: Annotated[ResultFormat | None, Query(description="Unset: the job's response_format")] = None,
) -> Response:
    job = await services.jobs.get(job_id, owner_of(request))
    chosen = ResponseFormat((format or ResultFormat(job.options["response_format"])).value)
    rules = CueLayout(**job.options.get("layout", {})).rules()
    timed = await services.jobs.result(job, rules)
    if chosen in (ResponseFormat.json, ResponseFormat.text):
        plain = TranscriptionResult(text=timed.text, language=timed.language, duration=timed.duration)
        return format_plain(plain, chosen)
    granularities = [TimestampGranularity.segment, TimestampGranularity.word]
    return format_timed(timed, chosen, granularities)


@router.get(
    "/v1/jobs/{job_id}/events",
    summary="A job's progress as Server-Sent Events, until it ends",
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}, **JOB_RESPONSES},
)
async def job_events(job_id: str, request: Request, services: ServicesDep) -> StreamingResponse:
    owner = owner_of(request)
    first = await services.jobs.get(job_id, owner)  # 404 before the stream starts

    async def events() -> AsyncIterator[bytes]:
        job, last, quiet = first, None, 0.0
        while True:
            body = job_object(job).model_dump(mode="json")
            seen = (body["status"], body["progress"]["done_seconds"], body["progress"]["total_seconds"])
            if seen != last:
                kind = f"job.{body['status']}" if job.state in TERMINAL_STATES else "job.progress"
                yield f"event: {kind}\ndata: {json.dumps({'type': kind, 'job': body})}\n\n".encode()
                last, quiet = seen, 0.0
            if job.state in TERMINAL_STATES:
                return
            await asyncio.sleep(EVENTS_POLL_SECONDS)
            quiet += EVENTS_POLL_SECONDS
            if quiet >= EVENTS_KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                quiet = 0.0
            job = await services.jobs.get(job_id, owner)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

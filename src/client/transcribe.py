"""`asr-server transcribe`: audio and video files to subtitles through the jobs API (docs/jobs.md).

Each file is uploaded as a job (streamed from disk), followed on its events stream with a progress bar, and its
result written as `<stem>.<ext>` beside the source or into `--out`; at most `--parallel` files are in flight.
A small state file in each output folder remembers the jobs submitted (source path, size and mtime → server and
job id), so a second run skips what is written and re-attaches to jobs still on the server; Ctrl-C leaves them
running there. Without `--server` the service is started in this process (settings from the environment, as
`asr-server serve` reads them) and stopped at the end; its jobs live in DATA_DIR, so a rerun resumes there too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from asr_server.client.api import ATTACHABLE, TERMINAL, ApiError, JobsClient, Target
from asr_server.client.files import (
    Fingerprint,
    Item,
    Outcome,
    StateFile,
    UsageError,
    plan,
    server_url,
    up_to_date,
    write_atomically,
)
from asr_server.client.progress import Display, make_display

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_PARALLEL = 3


@dataclass
class Run:
    client: JobsClient
    target: Target
    display: Display
    response_format: str
    form: dict[str, str]  # the POST /v1/jobs fields
    options: dict[str, str]  # those that change the transcript: a remembered job is reused only when they match
    force: bool
    slots: asyncio.Semaphore
    states: dict[Path, StateFile]

    def state(self, folder: Path) -> StateFile:
        if folder not in self.states:
            self.states[folder] = StateFile(folder)
        return self.states[folder]

    async def file(self, item: Item) -> Outcome:
        async with self.slots:
            try:
                outcome = await self._transcribe(item)
            except ApiError as exc:
                outcome = Outcome(item, "failed", exc.message)
            except httpx.HTTPError as exc:  # a connection lost outside the upload's and the events' own retries
                outcome = Outcome(item, "failed", f"{type(exc).__name__}: {exc} (run again to pick the job up)")
            except OSError as exc:
                outcome = Outcome(item, "failed", f"{exc.strerror or exc}: {exc.filename or item.source}")
        self.display.finish(outcome)
        return outcome

    async def _transcribe(self, item: Item) -> Outcome:
        fingerprint = Fingerprint.of(item.source)
        state = self.state(item.output.parent)
        job: dict[str, Any] | None = None
        known = None if self.force else state.job_for(item.source, fingerprint, self.target.identity, self.options)
        if known is not None:
            job = await self.client.get(known)
            if job is not None and job.get("status") in ATTACHABLE:
                self.display.note(item, f"re-attached to {known} ({job['status']})")
            else:
                why = "gone from the server" if job is None else str(job.get("status"))
                self.display.note(item, f"job {known} is {why}; submitting again")
                job = None
        if job is None:
            self.display.show(item, "uploading", 0.0, None)
            job = await self.client.submit(
                item.source,
                self.form,
                on_upload=lambda fraction: self.display.show(item, "uploading", fraction, None),
                on_wait=lambda text: self.display.note(item, text),
            )
            state.remember(item.source, fingerprint, self.target.identity, self.options, job["id"])
        self.display.job(item, job)
        if job.get("status") not in TERMINAL:
            job = await self.client.follow(job["id"], lambda update: self.display.job(item, update))
        if job.get("status") != "succeeded":
            error = job.get("error") or {}
            return Outcome(item, "failed", error.get("message") or f"the job was {job.get('status')}", job["id"])
        body = await self.client.result(job["id"], self.response_format)
        write_atomically(item.output, body)
        expires_at = job.get("expires_at")
        state.remember(item.source, fingerprint, self.target.identity, self.options, job["id"], expires_at)
        return Outcome(item, "written", job_id=job["id"])


def job_form(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """The POST /v1/jobs fields, and those of them that change the transcript."""
    options = {
        "language": args.language,
        "prompt": args.prompt,
        "subtitle_mode": args.subtitle_mode,
        "max_line_width": args.max_line_width,
        "max_lines": args.max_lines,
        "max_cue_duration": args.max_cue_duration,
        "max_cps": args.max_cps,
    }
    chosen = {name: str(value) for name, value in options.items() if value not in (None, "")}
    return {"response_format": args.format, **chosen}, chosen


async def transcribe_items(items: list[Item], target: Target, args: argparse.Namespace) -> list[Outcome]:
    form, options = job_form(args)
    client = JobsClient(target)
    try:
        await client.check()
        with make_display(len(items)) as display:
            run = Run(
                client=client,
                target=target,
                display=display,
                response_format=args.format,
                form=form,
                options=options,
                force=args.force,
                slots=asyncio.Semaphore(max(1, args.parallel)),
                states={},
            )
            return list(await asyncio.gather(*(run.file(item) for item in items)))
    finally:
        await client.aclose()


@contextlib.contextmanager
def in_process_service(api_key: str | None) -> Iterator[Target]:
    """The service on a loopback port in this process, configured as `asr-server serve` is (the environment and
    .env), its log at WARNING unless LOG_LEVEL says otherwise, so the bars stay readable."""
    from asr_server.api.security import load_api_keys
    from asr_server.config import Settings
    from asr_server.server import create_app
    from asr_server.testing import running_server

    settings = Settings()
    if "log_level" not in settings.model_fields_set:
        settings = settings.model_copy(update={"log_level": "WARNING"})
    if api_key is None:  # the service requires a key: use the first it accepts
        keys = load_api_keys(settings)
        api_key = keys[0].decode() if keys else None
    store = hashlib.sha256(settings.resolved_jobs_database_url().encode()).hexdigest()[:16]
    print(
        f"starting the service in this process (engine {getattr(settings.asr_engine, 'value', settings.asr_engine)}, "
        f"jobs in {settings.data_dir})",
        file=sys.stderr,
        flush=True,
    )
    with running_server(create_app(settings)) as base:
        yield Target(base, f"in-process:{store}", api_key)


def run(args: argparse.Namespace) -> int:
    """`asr-server transcribe`: 0 when every file was written (or was up to date), 1 when any failed, 2 for a usage
    error, 130 when interrupted (jobs already submitted keep running on the server)."""
    try:
        items = plan(args.files, Path(args.out) if args.out else None, args.format)
        url = server_url(args.server) if args.server else None
    except UsageError as exc:
        print(f"asr-server transcribe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    done = [] if args.force else [item for item in items if up_to_date(item)]
    todo = [item for item in items if item not in done]
    outcomes = [Outcome(item, "skipped") for item in done]
    for outcome in outcomes:
        print(Display.outcome_line(outcome), file=sys.stderr)
    api_key = args.api_key if args.api_key is not None else os.environ.get("ASR_API_KEY") or None
    try:
        if todo and url is not None:
            outcomes += asyncio.run(transcribe_items(todo, Target(url, url, api_key), args))
        elif todo:
            with contextlib.ExitStack() as stack:
                try:
                    target = stack.enter_context(in_process_service(api_key))
                except Exception as exc:  # the engine, the model or the settings: one line, not a traceback
                    print(f"asr-server transcribe: could not start the service: {exc}", file=sys.stderr)
                    return EXIT_FAILED
                outcomes += asyncio.run(transcribe_items(todo, target, args))
    except UsageError as exc:
        print(f"asr-server transcribe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        where = "keep running on the server" if url else "stay in the service's DATA_DIR"
        print(f"\ninterrupted: submitted jobs {where}; run the same command again to pick them up", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = sum(outcome.status == "failed" for outcome in outcomes)
    written = sum(outcome.status == "written" for outcome in outcomes)
    files = f"{len(outcomes)} file" + ("" if len(outcomes) == 1 else "s")
    current = len(outcomes) - written - failed
    print(f"{files}: {written} written, {current} up to date, {failed} failed", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK

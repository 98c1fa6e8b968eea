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
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import httpx

MEDIA_EXTENSIONS = ("wav", "flac", "mp3", "m4a", "mp4", "mkv", "mov", "webm", "ogg", "opus", "aac", "wma")
OUTPUT_EXTENSIONS = {"srt": "srt", "vtt": "vtt", "json": "json", "verbose_json": "json", "text": "txt"}
STATE_FILE = ".asr-transcribe.json"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ATTACHABLE = frozenset({"queued", "running", "succeeded"})  # a failed or cancelled job is submitted again

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_PARALLEL = 3
# The upload's answer comes once the server has stored the file and checked that it is audio.
UPLOAD_TIMEOUT = httpx.Timeout(30.0, read=600.0, write=600.0)
UPLOAD_TRIES = 3  # connection errors while uploading
# The events stream sends a comment every 15 s, so a minute of silence means the connection is gone.
EVENTS_TIMEOUT = httpx.Timeout(30.0, read=60.0)
LOST_CONTACT_SECONDS = 120.0  # stop following a job after this long without reaching the server
MAX_RETRY_AFTER_SECONDS = 60.0


class UsageError(Exception):
    """Exit status 2: no files, a bad server URL, a server that is not this service."""


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


# --- what to do -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    source: Path  # absolute
    output: Path  # absolute

    @property
    def name(self) -> str:
        return self.source.name


@dataclass(frozen=True)
class Outcome:
    item: Item
    status: Literal["written", "skipped", "failed"]
    message: str = ""
    job_id: str | None = None


def media_files(folder: Path) -> list[Path]:
    """The audio and video files directly in `folder`, by extension, in name order (hidden files left out)."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix[1:].lower() in MEDIA_EXTENSIONS
    )


def plan(paths: Sequence[str], out: Path | None, response_format: str) -> list[Item]:
    """Files named, and media files in folders named, each with its output path. Raises UsageError."""
    sources: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            sources.extend(media_files(path))
        elif path.is_file():
            sources.append(path)  # named explicitly: sent whatever its extension (the server judges it)
        else:
            raise UsageError(f"{raw}: no such file or folder")
    if not sources:
        raise UsageError(f"no audio or video files found (looked for: {', '.join(MEDIA_EXTENSIONS)})")
    extension = OUTPUT_EXTENSIONS[response_format]
    items: list[Item] = []
    seen_sources: set[Path] = set()
    writers: dict[Path, Path] = {}
    for source in sources:
        source = source.resolve()
        if source in seen_sources:
            continue
        seen_sources.add(source)
        output = ((out.expanduser().resolve() if out else source.parent) / f"{source.stem}.{extension}").resolve()
        if output == source:
            raise UsageError(f"{source}: the output would overwrite the source; choose --out or another --format")
        if output in writers:
            raise UsageError(f"{writers[output]} and {source} would both be written to {output}; use --out")
        writers[output] = source
        items.append(Item(source, output))
    return items


def up_to_date(item: Item) -> bool:
    """The output exists and is at least as new as the source."""
    try:
        return item.output.stat().st_mtime_ns >= item.source.stat().st_mtime_ns
    except OSError:
        return False


def server_url(raw: str) -> str:
    """The service's base URL (http or https, with a host). Raises UsageError."""
    try:
        url = httpx.URL(raw.strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise UsageError(f"--server {raw!r} is not a URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"--server {raw!r}: give an http:// or https:// URL with a host, e.g. http://localhost:8000")
    return str(url).rstrip("/")


# --- the state file ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fingerprint:
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Fingerprint:
        stat = path.stat()
        return cls(stat.st_size, stat.st_mtime_ns)


class StateFile:
    """`<output folder>/.asr-transcribe.json`: for each source (path, size, mtime) the server and job it was sent
    to, with the options that matter to its transcript. Written after each change (atomically, merged with what
    another run may have written meanwhile); an unreadable file counts as empty."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / STATE_FILE
        self._jobs = self._read()
        self._changed: set[str] = set()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        jobs = data.get("jobs") if isinstance(data, dict) else None
        return {key: value for key, value in (jobs or {}).items() if isinstance(value, dict)}

    def job_for(self, source: Path, fingerprint: Fingerprint, server: str, options: dict[str, Any]) -> str | None:
        entry = self._jobs.get(str(source))
        if entry is None:
            return None
        same = (entry.get("size"), entry.get("mtime_ns"), entry.get("server"), entry.get("options")) == (
            fingerprint.size,
            fingerprint.mtime_ns,
            server,
            options,
        )
        job_id = entry.get("job_id")
        return job_id if same and isinstance(job_id, str) else None

    def remember(
        self,
        source: Path,
        fingerprint: Fingerprint,
        server: str,
        options: dict[str, Any],
        job_id: str,
        expires_at: int | None = None,
    ) -> None:
        self._jobs[str(source)] = {
            "size": fingerprint.size,
            "mtime_ns": fingerprint.mtime_ns,
            "server": server,
            "options": options,
            "job_id": job_id,
            "expires_at": expires_at,
        }
        self._changed.add(str(source))
        self.save()

    def save(self) -> None:
        merged = self._read()
        merged.update({key: self._jobs[key] for key in self._changed})
        now = time.time()
        merged = {
            key: entry
            for key, entry in merged.items()
            if not (isinstance(entry.get("expires_at"), (int, float)) and entry["expires_at"] < now)
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        partial.write_text(json.dumps({"version": 1, "jobs": merged}, indent=1, sort_keys=True), "utf-8")
        os.replace(partial, self.path)


def write_atomically(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        partial.write_bytes(body)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


# --- the HTTP client ---------------------------------------------------------------------------------------------
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
def clock(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Display:
    """Progress on stderr, one bar per file in flight: live bars (rich) on a terminal, otherwise a line per
    tenth done (logs, pipes, CI). The time left is the server's estimate, or this client's from the pace seen."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._first_seen: dict[Item, tuple[float, float]] = {}  # (monotonic time, fraction) when running was seen

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def job(self, item: Item, job: dict[str, Any]) -> None:
        status = job.get("status")
        if status == "queued":
            self.show(item, "queued", None, None)
        elif status in ("running", "succeeded"):
            progress = job.get("progress") or {}
            fraction = 1.0 if status == "succeeded" else float(progress.get("fraction") or 0.0)
            self.show(item, "transcribing", fraction, self._eta(item, fraction, progress.get("eta_seconds")))

    def _eta(self, item: Item, fraction: float, server_eta: float | None) -> float | None:
        now = time.monotonic()
        first_time, first_fraction = self._first_seen.setdefault(item, (now, fraction))
        if server_eta is not None:
            return float(server_eta)
        if fraction >= 1.0:
            return 0.0
        if fraction > first_fraction and now > first_time:
            return (now - first_time) * (1.0 - fraction) / (fraction - first_fraction)
        return None

    def show(self, item: Item, phase: str, fraction: float | None, eta: float | None) -> None:
        raise NotImplementedError

    def note(self, item: Item | None, text: str) -> None:
        raise NotImplementedError

    def finish(self, outcome: Outcome) -> None:
        raise NotImplementedError

    @staticmethod
    def outcome_line(outcome: Outcome) -> str:
        if outcome.status == "written":
            return f"{outcome.item.name}: written {outcome.item.output}"
        if outcome.status == "skipped":
            return f"{outcome.item.name}: skipped, {outcome.item.output.name} is up to date"
        return f"{outcome.item.name}: failed: {outcome.message}"


class LineDisplay(Display):
    def __init__(self, total: int) -> None:
        super().__init__(total)
        self._last: dict[Item, tuple[str, int | None]] = {}

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def show(self, item: Item, phase: str, fraction: float | None, eta: float | None) -> None:
        tenth = None if fraction is None else int(fraction * 10)
        if self._last.get(item) == (phase, tenth):
            return
        self._last[item] = (phase, tenth)
        text = f"{item.name}: {phase}"
        if fraction is not None:
            text += f" {fraction:.0%}"
        if eta is not None and fraction is not None and fraction < 1.0:
            text += f", {clock(eta)} left"
        self._print(text)

    def note(self, item: Item | None, text: str) -> None:
        self._print(f"{item.name}: {text}" if item else text)

    def finish(self, outcome: Outcome) -> None:
        self._last.pop(outcome.item, None)
        self._print(self.outcome_line(outcome))


class RichDisplay(Display):
    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

        super().__init__(total)
        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            console=self._console,
            transient=False,
        )
        self._overall = self._progress.add_task("all files", total=total, info="")
        self._tasks: dict[Item, TaskID] = {}
        self._finished = 0

    def __enter__(self) -> RichDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _task(self, item: Item) -> Any:
        if item not in self._tasks:
            self._tasks[item] = self._progress.add_task(item.name, total=100, info="")
        return self._tasks[item]

    def show(self, item: Item, phase: str, fraction: float | None, eta: float | None) -> None:
        info = phase if eta is None or fraction is None or fraction >= 1.0 else f"{phase}, {clock(eta)} left"
        self._progress.update(self._task(item), completed=100 * (fraction or 0.0), info=info)

    def note(self, item: Item | None, text: str) -> None:
        self._progress.console.print(f"{item.name}: {text}" if item else text, markup=False, highlight=False)

    def finish(self, outcome: Outcome) -> None:
        task = self._tasks.pop(outcome.item, None)
        if task is not None:
            self._progress.remove_task(task)
        self._finished += 1
        self._progress.update(self._overall, completed=self._finished)
        self._progress.refresh()  # a line printed redraws the bars as last rendered: render them as they are now
        self.note(None, self.outcome_line(outcome))


def make_display(total: int) -> Display:
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        return RichDisplay(total)
    return LineDisplay(total)


# --- the run -----------------------------------------------------------------------------------------------------
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

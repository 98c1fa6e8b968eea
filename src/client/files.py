"""What `asr-server transcribe` works on: the files named, their outputs, and the state file that lets a rerun
skip what is written and re-attach to jobs still on the server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

MEDIA_EXTENSIONS = ("wav", "flac", "mp3", "m4a", "mp4", "mkv", "mov", "webm", "ogg", "opus", "aac", "wma")
OUTPUT_EXTENSIONS = {"srt": "srt", "vtt": "vtt", "json": "json", "verbose_json": "json", "text": "txt"}
STATE_FILE = ".asr-transcribe.json"


class UsageError(Exception):
    """Exit status 2: no files, a bad server URL, a server that is not this service."""


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

"""A job survives its server being killed: the restarted server resumes it from its last finished piece, no
finished piece is transcribed again, the result is exact, and the webhook is sent once.

The server is a child process (`tests/tone_words.py PORT DELAY`: the app with the tone-word engine), killed
with SIGKILL mid-job, so nothing gets to clean up.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import srt

from asr_server.jobs.store import JobStore
from asr_server.jobs.webhooks import SIGNATURE_HEADER, verify

from support import free_port
from tone_words import script, write_flac
from webhook_receiver import Receiver

TESTS = Path(__file__).resolve().parent
SECRET = "restart-secret"
SECONDS = 2 * 3600.0


@contextmanager
def tone_server(data_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "JOBS_LEASE_SECONDS": "2",
        "ALIGN_CHUNK_SECONDS": "60",
        "DEVICE": "cpu",
        "WARMUP": "false",
        "LOG_LEVEL": "WARNING",
        "WEBHOOK_SECRET": SECRET,
        "PYTHONPATH": str(TESTS),
    }
    process = subprocess.Popen(
        [sys.executable, str(TESTS / "tone_words.py"), str(port), "0.05"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the server exited"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(20)


def transcribed_seconds(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r"^asr_audio_seconds_total (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_killed_server_resumes_the_job_where_it_stopped(tmp_path: Path, receiver: Receiver) -> None:
    spoken = script(SECONDS, piece_seconds=60.0, seed=21)
    media = write_flac(tmp_path / "film.flac", spoken, SECONDS)
    data = tmp_path / "data"
    with tone_server(data) as (url, process), media.open("rb") as upload:
        response = httpx.post(
            f"{url}/v1/jobs",
            files={"file": ("film.flac", upload)},
            data={"response_format": "srt", "webhook_url": receiver.url},
            timeout=60,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while (job := httpx.get(f"{url}/v1/jobs/{job_id}").json())["progress"]["done_seconds"] < 1800:
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    store = JobStore(f"sqlite:///{data / 'jobs.db'}")
    try:
        before = store.pieces(job_id)
        killed = store.get(job_id)
    finally:
        store.close()
    assert killed is not None and killed.state.value == "running"  # it died holding the job
    stored_seconds = sum(piece.end - piece.start for piece in before)
    assert 1800 <= stored_seconds < SECONDS - 600, "the kill did not land mid-job"
    assert not receiver.requests

    with tone_server(data) as (url, _):
        deadline = time.monotonic() + 180
        while (job := httpx.get(f"{url}/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.2)
        # Only what the first server had not finished was transcribed again.
        assert transcribed_seconds(url) == pytest.approx(SECONDS - stored_seconds, abs=0.01)
        subtitles = httpx.get(f"{url}/v1/jobs/{job_id}/result", timeout=60)
        assert [w for cue in srt.parse(subtitles.text) for w in cue.content.split()] == [s.word for s in spoken]
        assert job["progress"]["done_seconds"] == pytest.approx(SECONDS, abs=0.1)
        deadline = time.monotonic() + 20
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.1)

    store = JobStore(f"sqlite:///{data / 'jobs.db'}")
    try:
        after = store.pieces(job_id)
    finally:
        store.close()
    assert [p.index for p in after] == list(range(len(after)))
    assert {(p.index, p.start, p.end) for p in before} <= {(p.index, p.start, p.end) for p in after}
    (delivery,) = receiver.requests
    assert delivery.headers["x-asr-event"] == "job.succeeded"
    assert verify(SECRET.encode(), delivery.body, delivery.headers[SIGNATURE_HEADER.lower()])

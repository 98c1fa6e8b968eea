"""POST /v1/jobs and friends through HTTP: a two-hour file as a job with progress, results in every format,
a signed webhook, cancellation, keys that see only their own jobs, limits, retention, and PostgreSQL shared by
two gateways. The restart test lives in test_jobs_restart.py."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import srt
import webvtt
from openai.types.audio import TranscriptionVerbose

from asr_server.config import Settings
from asr_server.jobs.webhooks import SIGNATURE_HEADER, verify
from asr_server.media.vad import split_at_quiet_points
from asr_server.server import create_app

from openai_strict import strict
from support import GatedEngine, encode, running_server, speechlike
from tone_words import ToneWordEngine, render, script, write_flac
from webhook_receiver import Receiver

SECRET = "webhook-secret"
PIECE = 60.0


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "asr_engine": "fake",
        "data_dir": tmp_path / "data",
        "device": "cpu",
        "align_chunk_seconds": PIECE,
        "webhook_secret": SECRET,
        "webhook_backoff_seconds": 0.05,
    }
    return Settings(**{**values, **overrides})


def submit(
    url: str, name: str, data: bytes | Path, headers: dict[str, str] | None = None, **form: str
) -> httpx.Response:
    if isinstance(data, Path):
        with data.open("rb") as media:
            return httpx.post(f"{url}/v1/jobs", files={"file": (name, media)}, data=form, headers=headers, timeout=60)
    return httpx.post(f"{url}/v1/jobs", files={"file": (name, data)}, data=form, headers=headers, timeout=60)


def wait_for(url: str, job_id: str, states: set[str], headers: dict[str, str] | None = None, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
        if job["status"] in states:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


@pytest.fixture(scope="module")
def two_hours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    seconds = 2 * 3600.0
    spoken = script(seconds, piece_seconds=PIECE, seed=7)
    return write_flac(tmp_path_factory.mktemp("media") / "film.flac", spoken, seconds), spoken


def test_a_two_hour_file_as_a_job(tmp_path: Path, two_hours: tuple[Path, list], receiver: Receiver) -> None:
    path, spoken = two_hours
    app = create_app(_settings(tmp_path), engine=ToneWordEngine(delay=0.01))
    with running_server(app) as url:
        started = time.monotonic()
        response = submit(url, "film.flac", path, response_format="srt", webhook_url=receiver.url)
        assert response.status_code == 202, response.text
        assert time.monotonic() - started < 10  # answered once stored, not once transcribed
        job = response.json()
        assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
        assert job["status"] in ("queued", "running") and job["object"] == "transcription.job"

        events = []
        with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", timeout=300) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = list(sse(stream))
        assert events[-1]["type"] == "job.succeeded"
        progress = [e["job"]["progress"]["done_seconds"] for e in events]
        assert progress == sorted(progress) and len(set(progress)) > 5  # it reported as it went
        running = [e["job"] for e in events if e["job"]["status"] == "running" and e["job"]["progress"]["eta_seconds"]]
        assert running and all(j["progress"]["total_seconds"] == pytest.approx(7200, abs=1) for j in running)
        final = events[-1]["job"]
        assert final["progress"]["fraction"] == 1.0 and final["progress"]["done_seconds"] == pytest.approx(
            7200, abs=0.1
        )

        words = [s.word for s in spoken]
        subtitles = httpx.get(f"{url}/v1/jobs/{job['id']}/result", timeout=60)  # the job's format: srt
        assert subtitles.headers["content-type"].startswith("application/x-subrip")
        cues = list(srt.parse(subtitles.text))
        assert [w for cue in cues for w in cue.content.split()] == words
        vtt = httpx.get(f"{url}/v1/jobs/{job['id']}/result", params={"format": "vtt"}, timeout=60)
        captions = webvtt.from_buffer(io.StringIO(vtt.text))
        assert [w for c in captions for w in c.text.split()] == words
        assert len(captions) == len(cues)
        text = httpx.get(f"{url}/v1/jobs/{job['id']}/result", params={"format": "text"}, timeout=60).text
        assert text.split() == words
        verbose = httpx.get(f"{url}/v1/jobs/{job['id']}/result", params={"format": "verbose_json"}, timeout=60)
        body = strict(TranscriptionVerbose, verbose.json())
        assert [w.word for w in body.words] == words and body.duration == pytest.approx(7200, abs=0.1)
        assert all(0.0 <= seg.no_speech_prob <= 1.0 for seg in body.segments)

        job = wait_for(url, job["id"], {"succeeded"})
        deadline = time.monotonic() + 30
        while (job["webhook"] or {}).get("state") != "delivered" and time.monotonic() < deadline:
            time.sleep(0.1)
            job = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
        assert job["webhook"]["state"] == "delivered" and job["webhook"]["attempts"] == 1
        listed = httpx.get(f"{url}/v1/jobs").json()
        assert [j["id"] for j in listed["data"]] == [job["id"]]
    (delivery,) = receiver.requests
    assert delivery.headers["x-asr-event"] == "job.succeeded"
    assert verify(SECRET.encode(), delivery.body, delivery.headers[SIGNATURE_HEADER.lower()])
    assert not verify(b"another secret", delivery.body, delivery.headers[SIGNATURE_HEADER.lower()])
    sent = json.loads(delivery.body)
    assert sent["id"] == job["id"] and sent["status"] == "succeeded"


def test_keys_see_only_their_own_jobs(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, api_keys="key-one,key-two"))
    one, two = {"Authorization": "Bearer key-one"}, {"Authorization": "Bearer key-two"}
    with running_server(app) as url:
        assert submit(url, "a.wav", encode(speechlike(3, seed=1))).status_code == 401
        job = submit(url, "a.wav", encode(speechlike(3, seed=1)), headers=one, prompt="mine").json()
        wait_for(url, job["id"], {"succeeded"}, headers=one)
        for method, path in [
            ("GET", f"/v1/jobs/{job['id']}"),
            ("GET", f"/v1/jobs/{job['id']}/result"),
            ("GET", f"/v1/jobs/{job['id']}/events"),
            ("DELETE", f"/v1/jobs/{job['id']}"),
        ]:
            refused = httpx.request(method, f"{url}{path}", headers=two, timeout=10)
            assert refused.status_code == 404, (method, path, refused.text)
            assert refused.json()["error"]["code"] == "job_not_found"
        assert httpx.get(f"{url}/v1/jobs", headers=two).json()["data"] == []
        assert [j["id"] for j in httpx.get(f"{url}/v1/jobs", headers=one).json()["data"]] == [job["id"]]
        result = httpx.get(f"{url}/v1/jobs/{job['id']}/result", headers=one)
        assert result.json()["text"] == "mine"


def test_cancel_a_running_job(tmp_path: Path, receiver: Receiver) -> None:
    engine = GatedEngine()
    app = create_app(_settings(tmp_path, warmup=False), engine=engine)
    with running_server(app) as url:
        job = submit(url, "long.flac", encode(speechlike(400, seed=2), fmt="FLAC"), webhook_url=receiver.url).json()
        wait_for(url, job["id"], {"running"})
        cancelled = httpx.delete(f"{url}/v1/jobs/{job['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        engine.gate.set()
        time.sleep(1.0)
        job = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
        assert job["status"] == "cancelled" and job["progress"]["done_seconds"] < 400
        result = httpx.get(f"{url}/v1/jobs/{job['id']}/result")
        assert result.status_code == 409 and result.json()["error"]["code"] == "job_not_finished"
        again = httpx.delete(f"{url}/v1/jobs/{job['id']}")  # cancelling a finished job leaves it as it is
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [r.headers["x-asr-event"] for r in receiver.requests] == ["job.cancelled"]


def test_a_stopped_server_gives_its_job_back(tmp_path: Path) -> None:
    """A graceful stop (SIGTERM, a deploy) does not wait for the lease: the next server resumes the job at once."""
    held = GatedEngine()
    settings = _settings(tmp_path, warmup=False, jobs_lease_seconds=600)
    with running_server(create_app(settings, engine=held)) as url:
        job = submit(url, "talk.flac", encode(speechlike(200, seed=3), fmt="FLAC"), prompt="resumed").json()
        wait_for(url, job["id"], {"running"})
    held.gate.set()  # let the stopped server's engine thread go
    with running_server(create_app(settings)) as url:
        done = wait_for(url, job["id"], {"succeeded"}, timeout=30)  # far sooner than the 600 s lease
        assert done["progress"]["done_seconds"] == pytest.approx(200, abs=0.1)
        text = httpx.get(f"{url}/v1/jobs/{job['id']}/result", params={"format": "text"}).text
        assert text.split() == ["resumed"] * len(split_at_quiet_points(speechlike(200, seed=3), 16_000, PIECE))


def test_bad_requests_get_clear_errors_and_leave_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path, jobs_max_media_mb_per_key=0.5)
    with running_server(create_app(settings)) as url:
        cases = [
            (("notes.wav", b"this is not audio at all"), {}, 400, "file"),
            (("a.wav", encode(speechlike(3, seed=1))), {"webhook_url": "ftp://example.com/x"}, 400, "webhook_url"),
            (("a.wav", encode(speechlike(3, seed=1))), {"diarize": "true"}, 400, "diarize"),
            (("a.wav", encode(speechlike(3, seed=1))), {"response_format": "diarized_json"}, 400, "response_format"),
            (("a.wav", encode(speechlike(3, seed=1))), {"max_lines": "0"}, 400, "max_lines"),
            (("big.wav", encode(speechlike(30, seed=1))), {}, 413, "file"),  # past the key's 0.5 MiB of media
        ]
        for (name, data), form, status, param in cases:
            response = submit(url, name, data, **form)
            assert response.status_code == status, (form, response.text)
            assert response.json()["error"]["param"] == param, response.text
        assert httpx.get(f"{url}/v1/jobs").json()["data"] == []
        assert list((tmp_path / "data" / "media").iterdir()) == []  # nothing kept of refused uploads
        missing = httpx.get(f"{url}/v1/jobs/job_nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
        assert httpx.get(f"{url}/v1/jobs/job_nope/result", params={"format": "docx"}).status_code in (400, 404)
        assert submit(url, "a.wav", encode(speechlike(3, seed=1))).status_code == 202  # still serving


def test_active_jobs_per_key_are_bounded(tmp_path: Path) -> None:
    engine = GatedEngine()
    app = create_app(_settings(tmp_path, jobs_max_active_per_key=2, warmup=False), engine=engine)
    with running_server(app) as url:
        first = submit(url, "a.wav", encode(speechlike(3, seed=1))).json()
        second = submit(url, "b.wav", encode(speechlike(3, seed=2))).json()
        third = submit(url, "c.wav", encode(speechlike(3, seed=3)))
        assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_jobs"
        assert "Retry-After" in third.headers
        engine.gate.set()
        wait_for(url, first["id"], {"succeeded"})
        wait_for(url, second["id"], {"succeeded"})
        assert submit(url, "c.wav", encode(speechlike(3, seed=3))).status_code == 202


def test_webhook_retries_then_gives_up_visibly(tmp_path: Path, receiver: Receiver) -> None:
    receiver.script = [503, 503]
    app = create_app(_settings(tmp_path, webhook_max_attempts=3))
    with running_server(app) as url:
        job = submit(url, "a.wav", encode(speechlike(3, seed=1)), webhook_url=receiver.url).json()
        job = wait_for(url, job["id"], {"succeeded"})
        deadline = time.monotonic() + 20
        while job["webhook"]["state"] != "delivered" and time.monotonic() < deadline:
            time.sleep(0.1)
            job = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
        assert job["webhook"]["state"] == "delivered" and job["webhook"]["attempts"] == 3
        assert [r.headers["x-asr-delivery-attempt"] for r in receiver.requests] == ["1", "2", "3"]

        receiver.script = [500] * 10
        failing = submit(url, "b.wav", encode(speechlike(3, seed=2)), webhook_url=receiver.url).json()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            failing = httpx.get(f"{url}/v1/jobs/{failing['id']}").json()
            if failing["webhook"]["state"] == "failed":
                break
            time.sleep(0.1)
        assert failing["status"] == "succeeded"  # the job itself is fine
        assert failing["webhook"] == {**failing["webhook"], "state": "failed", "attempts": 3, "last_error": "HTTP 500"}


def test_finished_jobs_and_their_media_are_removed_after_retention(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, jobs_retention_hours=1 / 3600))  # one second
    with running_server(app) as url:
        job = submit(url, "a.wav", encode(speechlike(3, seed=1))).json()
        wait_for(url, job["id"], {"succeeded"})
        media = tmp_path / "data" / "media"
        deadline = time.monotonic() + 15
        while httpx.get(f"{url}/v1/jobs/{job['id']}").status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert list(media.iterdir()) == []


def test_two_gateways_share_jobs_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """Ray mode's replicas: one PostgreSQL database and one data folder. A job sent to one gateway is seen,
    and its result read, on the other; it runs once."""
    from postgres_server import create_database

    database = create_database(postgres_url)
    shared = {"jobs_database_url": database, "data_dir": tmp_path / "shared"}
    first_engine, second_engine = ToneWordEngine(), ToneWordEngine()
    first = create_app(_settings(tmp_path, warmup=False, **shared), engine=first_engine)
    second = create_app(_settings(tmp_path, warmup=False, **shared), engine=second_engine)
    spoken = script(300.0, piece_seconds=PIECE, seed=11)
    path = write_flac(tmp_path / "talk.flac", spoken, 300.0)
    with running_server(first) as one, running_server(second) as two:
        job = submit(one, "talk.flac", path).json()
        done = wait_for(two, job["id"], {"succeeded"})
        assert done["progress"]["done_seconds"] == pytest.approx(300, abs=0.1)
        text = httpx.get(f"{two}/v1/jobs/{job['id']}/result", params={"format": "text"}).text
        assert text.split() == [s.word for s in spoken]
    pieces = split_at_quiet_points(render(spoken, 300.0), 16_000, PIECE)
    assert first_engine.items_seen + second_engine.items_seen == len(pieces)  # each piece ran once

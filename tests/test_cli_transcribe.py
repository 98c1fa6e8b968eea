"""`asr-server transcribe` against a real server (fake engine): folders to SRT/VTT files parsed by the `srt` and
`webvtt-py` packages, progress on stderr, a rerun that skips, an interrupted run re-attached to its job, errors
with the server's message, usage errors, and the in-process service when no --server is given."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import srt
import webvtt

from asr_server.cli import main
from asr_server.config import Settings
from asr_server.engines import TranscribeItem, Transcript
from asr_server.engines.fake import FakeEngine
from asr_server.server import create_app

from support import GatedEngine, encode, running_server, speechlike, tone

CLI = str(Path(sys.executable).parent / "asr-server")
STATE = ".asr-transcribe.json"
PROMPT = "Subtitles made on the command line."


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASR_API_KEY", raising=False)


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(asr_engine="fake", data_dir=tmp_path / "data", warmup=False, log_level="WARNING", **values)


class SlowEngine(FakeEngine):
    """The fake engine at a fixed pace per batch, so that a long file's job is seen part done."""

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        time.sleep(0.3)
        return super().transcribe(items)


@contextlib.contextmanager
def server(tmp_path: Path, engine: FakeEngine | None = None, **values: object) -> Iterator[str]:
    with running_server(create_app(settings(tmp_path, **values), engine=engine)) as url:
        yield url


def media_folder(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"clip{index}.wav"
        path.write_bytes(encode(speechlike(3.0, seed=index)))
        paths.append(path)
    (folder / "notes.txt").write_text("not audio: left out of a folder by its extension")
    return paths


def jobs(url: str, key: str | None = None) -> list[dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{url}/v1/jobs", headers=headers)
    response.raise_for_status()
    return response.json()["data"]


def cue_texts(path: Path) -> list[str]:
    return [cue.content for cue in srt.parse(path.read_text("utf-8"))]


def test_a_folder_becomes_srt_files_with_progress_and_a_rerun_skips_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = media_folder(tmp_path / "media")
    out = tmp_path / "subs"
    with server(tmp_path) as url:
        args = ["transcribe", str(tmp_path / "media"), "--server", url, "--out", str(out), "--prompt", PROMPT]
        assert main([*args, "--format", "srt"]) == 0
        err = capsys.readouterr().err
        for source in sources:
            assert cue_texts(out / f"{source.stem}.srt") == [PROMPT]
            assert f"{source.name}: written {out / (source.stem + '.srt')}" in err
            assert f"{source.name}: uploading" in err and f"{source.name}: transcribing 100%" in err
        assert "3 files: 3 written, 0 up to date, 0 failed" in err
        assert not (out / "notes.srt").exists()  # a folder gives its media files only
        assert len(jobs(url)) == 3

        assert main([*args, "--format", "srt"]) == 0  # everything is up to date: no job is submitted
        assert "3 files: 0 written, 3 up to date, 0 failed" in capsys.readouterr().err
        assert len(jobs(url)) == 3

        later = time.time() + 5
        os.utime(sources[0], (later, later))  # a changed source is transcribed again, the others not
        assert main([*args, "--format", "srt"]) == 0
        assert "3 files: 1 written, 2 up to date, 0 failed" in capsys.readouterr().err
        assert len(jobs(url)) == 4

        vtt_out = tmp_path / "vtt"
        assert main(["transcribe", str(sources[1]), "--server", url, "--out", str(vtt_out), "--format", "vtt"]) == 0
        captions = webvtt.read(str(vtt_out / "clip1.vtt"))
        assert [caption.text for caption in captions] == ["This is a test transcript."]
        assert captions[-1].end_in_seconds == pytest.approx(3.0, abs=0.05)


def test_progress_shows_the_percent_and_the_time_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "lecture.flac"
    source.write_bytes(encode(tone(300.0), fmt="FLAC"))  # five minutes: a job of several pieces
    with server(tmp_path, engine=SlowEngine(), pieces_in_flight=1) as url:
        assert main(["transcribe", str(source), "--server", url, "--format", "text"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"lecture\.flac: transcribing [1-9]\d%, \d+:\d\d left", err), err
    assert source.with_suffix(".txt").read_text().startswith("This is a test transcript.")


def test_a_file_the_server_refuses_fails_with_its_message_and_the_rest_are_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = media_folder(tmp_path / "media", count=1)[0]
    with server(tmp_path) as url:
        code = main(["transcribe", str(good), str(tmp_path / "media" / "notes.txt"), "--server", url])
    err = capsys.readouterr().err
    assert code == 1
    assert "notes.txt: failed: unsupported file format '.txt'" in err
    assert cue_texts(good.with_suffix(".srt")) == ["This is a test transcript."]  # written beside its source
    assert "2 files: 1 written, 0 up to date, 1 failed" in err


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["transcribe", str(tmp_path / "empty"), "--server", "http://127.0.0.1:9"]) == 2
    assert "no audio or video files found" in capsys.readouterr().err
    assert main(["transcribe", str(tmp_path / "missing.wav"), "--server", "http://127.0.0.1:9"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    source = media_folder(tmp_path / "media", count=1)[0]
    assert main(["transcribe", str(source), "--server", "ftp://example.com"]) == 2
    assert "give an http:// or https:// URL" in capsys.readouterr().err
    twin = media_folder(tmp_path / "other", count=1)[0]  # other/clip0.wav beside media/clip0.wav
    assert main(["transcribe", str(source), str(twin), "--out", str(tmp_path), "--server", "http://127.0.0.1:9"]) == 2
    assert f"would both be written to {tmp_path / 'clip0.srt'}" in capsys.readouterr().err
    with server(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
    assert main(["transcribe", str(source), "--server", f"http://127.0.0.1:{port}"]) == 2  # nothing listens now
    assert "cannot reach" in capsys.readouterr().err


def test_the_api_key_comes_from_the_flag_or_asr_api_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = media_folder(tmp_path / "media", count=1)[0]
    with server(tmp_path, api_keys=["key-one"]) as url:
        assert main(["transcribe", str(source), "--server", url]) == 2
        assert "--api-key or ASR_API_KEY" in capsys.readouterr().err
        monkeypatch.setenv("ASR_API_KEY", "key-one")
        assert main(["transcribe", str(source), "--server", url]) == 0
        assert len(jobs(url, "key-one")) == 1
    assert cue_texts(source.with_suffix(".srt")) == ["This is a test transcript."]


def test_an_interrupted_run_leaves_the_job_running_and_the_rerun_re_attaches_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = media_folder(tmp_path / "media", count=1)[0]
    out = tmp_path / "subs"
    engine = GatedEngine()  # holds every batch until the gate opens: the job stays running
    with server(tmp_path, engine=engine) as url:
        command = [CLI, "transcribe", str(source), "--server", url, "--out", str(out), "--prompt", PROMPT]
        env = {key: value for key, value in os.environ.items() if key != "ASR_API_KEY"}
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 15
            while not (out / STATE).exists() or not engine.seconds:  # submitted, remembered, and running
                assert time.monotonic() < deadline and child.poll() is None, child.communicate()
                time.sleep(0.05)
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=15)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == 130, err
        assert "run the same command again" in err
        remembered = json.loads((out / STATE).read_text())["jobs"][str(source.resolve())]["job_id"]
        (job,) = jobs(url)
        assert job["id"] == remembered and job["status"] in ("queued", "running")  # not cancelled
        assert not (out / "clip0.srt").exists()

        engine.gate.set()
        assert main(["transcribe", str(source), "--server", url, "--out", str(out), "--prompt", PROMPT]) == 0
        assert f"re-attached to {remembered}" in capsys.readouterr().err
        assert [job["id"] for job in jobs(url)] == [remembered]  # no second job
    assert cue_texts(out / "clip0.srt") == [PROMPT]


def test_without_server_the_service_runs_in_process_and_its_jobs_persist_in_data_dir(tmp_path: Path) -> None:
    sources = media_folder(tmp_path / "media", count=2)
    env = {key: value for key, value in os.environ.items() if key not in ("ASR_API_KEY", "API_KEYS", "LOG_LEVEL")}
    env |= {"ASR_ENGINE": "fake", "DATA_DIR": str(tmp_path / "data"), "WARMUP": "false"}
    command = [CLI, "transcribe", str(tmp_path / "media"), "--format", "vtt", "--prompt", PROMPT]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "starting the service in this process (engine fake" in done.stderr
    for source in sources:
        assert [caption.text for caption in webvtt.read(str(source.with_suffix(".vtt")))] == [PROMPT]
    assert (tmp_path / "data" / "jobs.db").exists()

    # The next run starts a new service on another port, on the same DATA_DIR: it finds the job it remembers.
    state = json.loads((tmp_path / "media" / STATE).read_text())["jobs"]
    sources[0].with_suffix(".vtt").unlink()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"re-attached to {state[str(sources[0].resolve())]['job_id']} (succeeded)" in again.stderr
    assert "2 files: 1 written, 1 up to date, 0 failed" in again.stderr
    assert [caption.text for caption in webvtt.read(str(sources[0].with_suffix(".vtt")))] == [PROMPT]

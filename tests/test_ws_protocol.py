"""/ws/transcribe through a real server and the `websockets` client: every message, limit and failure.

The fake engine echoes the start message's prompt, the energy VAD finds the tone bursts; audio is sent
faster than real time. One test streams through the real engine on the tiny "hello world" checkpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from asr_server.config import Settings
from asr_server.server import create_app

from support import GatedEngine, running_server, tone

RATE = 16_000


def pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def utterances(*lengths: float, rate: int = RATE) -> np.ndarray:
    """Tone bursts of the given lengths, each followed by 1 s of silence."""
    parts = [silence(0.5, rate)]
    for i, length in enumerate(lengths):
        parts += [tone(length, rate, 200.0 + 40 * i), silence(1.0, rate)]
    return np.concatenate(parts)


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"asr_engine": "fake", "stream_vad": "energy", "warmup": False, "log_level": "WARNING"}
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(create_app(settings(stream_max_frame_bytes=16_384))) as url:
        yield url.replace("http", "ws") + "/ws/transcribe"


async def open_stream(url: str) -> tuple[Any, dict[str, Any]]:
    ws = await websockets.connect(url)
    return ws, json.loads(await ws.recv())


async def send_audio(ws: Any, samples: np.ndarray, chunk: int = 3200) -> None:
    for offset in range(0, samples.size, chunk):
        await ws.send(pcm(samples[offset : offset + chunk]))


async def events(ws: Any, timeout: float = 15.0) -> AsyncIterator[dict[str, Any]]:
    """Server events until the server closes the stream."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        except websockets.ConnectionClosed:
            return
        yield json.loads(message)


async def run(url: str, samples: np.ndarray, start: dict[str, Any] | None = None) -> tuple[list[dict], Any]:
    """Start, send, stop; return every event and the closed socket."""
    ws, _ = await open_stream(url)
    if start is not None:
        await ws.send(json.dumps({"type": "start", **start}))
    await send_audio(ws, samples)
    await ws.send(json.dumps({"type": "stop"}))
    received = [event async for event in events(ws)]
    return received, ws


def of_type(received: list[dict], kind: str) -> list[dict]:
    return [event for event in received if event["type"] == kind]


async def test_ready_announces_the_audio_format_and_the_limits(server: str) -> None:
    ws, ready = await open_stream(server)
    await ws.close()
    assert ready["type"] == "ready" and ready["session_id"]
    assert ready["audio"] == {
        "encoding": "pcm_s16le",
        "channels": 1,
        "sample_rate": 16000,
        "sample_rates": [8000, 16000, 24000, 48000],
    }
    assert ready["limits"]["max_frame_bytes"] == 16_384
    assert set(ready["limits"]) >= {"max_buffer_seconds", "idle_timeout_seconds", "max_session_seconds"}
    assert ready["limits"]["max_concurrent_streams"] >= 1


async def test_each_utterance_gets_a_final_and_stop_closes_normally(server: str) -> None:
    received, ws = await run(server, utterances(1.0, 2.0, 1.5), {"prompt": "hello from a stream", "language": "en"})
    finals = of_type(received, "final")
    assert [f["segment_id"] for f in finals] == [0, 1, 2]
    assert all(f["text"] == "hello from a stream" and f["language"] == "english" for f in finals)
    assert finals[0]["start"] == pytest.approx(0.2, abs=0.1) and finals[0]["end"] == pytest.approx(1.7, abs=0.1)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(finals))
    assert of_type(received, "error") == []
    assert ws.close_code == 1000


@pytest.mark.parametrize("rate", [8000, 24000, 48000])
async def test_other_sample_rates_are_converted(server: str, rate: int) -> None:
    received, _ = await run(server, utterances(1.5, rate=rate), {"prompt": f"at {rate}", "sample_rate": rate})
    finals = of_type(received, "final")
    assert [f["text"] for f in finals] == [f"at {rate}"]
    assert finals[0]["start"] == pytest.approx(0.2, abs=0.1) and finals[0]["end"] == pytest.approx(2.2, abs=0.1)


async def test_partials_precede_their_final(server: str) -> None:
    ws, _ = await open_stream(server)
    await ws.send(json.dumps({"type": "start", "prompt": "growing words"}))
    audio = np.concatenate([silence(0.3), tone(5.0), silence(1.0)])
    for offset in range(0, audio.size, 1600):  # paced a little, so partials have time to run
        await ws.send(pcm(audio[offset : offset + 1600]))
        await asyncio.sleep(0.01)
    await ws.send(json.dumps({"type": "stop"}))
    received = [event async for event in events(ws)]
    kinds = [(e["type"], e.get("segment_id")) for e in received]
    assert ("partial", 0) in kinds and kinds.index(("partial", 0)) < kinds.index(("final", 0))
    partial = of_type(received, "partial")[0]
    assert partial["text"] == "growing words" and partial["end"] > partial["start"]
    assert not [k for k in kinds[kinds.index(("final", 0)) :] if k == ("partial", 0)]


async def test_flush_finalises_what_was_heard(server: str) -> None:
    ws, _ = await open_stream(server)
    await ws.send(json.dumps({"type": "start", "prompt": "flushed"}))
    await send_audio(ws, np.concatenate([silence(0.3), tone(1.0)]))  # no pause: the VAD alone would wait
    await ws.send(json.dumps({"type": "flush"}))
    final = None
    async for event in events(ws, timeout=10):
        if event["type"] == "final":
            final = event
            break
    assert final is not None and final["text"] == "flushed"
    await ws.close()


async def test_bad_frames_get_error_events_and_the_stream_goes_on(server: str) -> None:
    ws, _ = await open_stream(server)
    bad = [
        json.dumps({"type": "start", "sample_rate": 44100}),
        json.dumps({"type": "start", "language": "klingon"}),
        b"\x01\x02\x03",  # odd byte count
        b"\x00" * 16_386,  # over max_frame_bytes
        "this is not json",
        json.dumps([1, 2, 3]),
        json.dumps({"type": "subscribe"}),
        "x" * 20_000,
    ]
    for frame in bad:
        await ws.send(frame)
    await ws.send(json.dumps({"type": "start", "prompt": "still fine"}))
    await send_audio(ws, utterances(1.0))
    await ws.send(json.dumps({"type": "start"}))  # too late: audio already flows
    await ws.send(json.dumps({"type": "stop"}))
    received = [event async for event in events(ws)]
    codes = [e["code"] for e in of_type(received, "error")]
    assert codes == [
        "invalid_message",
        "invalid_language",
        "invalid_audio",
        "frame_too_large",
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "frame_too_large",
        "invalid_state",
    ]
    assert all(set(e) >= {"type", "code", "message"} and e["message"] for e in of_type(received, "error"))
    assert [f["text"] for f in of_type(received, "final")] == ["still fine"]
    assert ws.close_code == 1000


async def test_concurrent_streams_do_not_affect_each_other(server: str) -> None:
    async def well_behaved(index: int) -> list[dict]:
        received, _ = await run(server, utterances(1.0, 1.0), {"prompt": f"stream {index}"})
        return received

    async def misbehaving() -> list[dict]:
        ws, _ = await open_stream(server)
        for frame in (b"\x01", "{", json.dumps({"type": "nope"})):
            await ws.send(frame)
        await ws.close()
        return []

    results = await asyncio.gather(*(well_behaved(i) for i in range(3)), misbehaving())
    for index, received in enumerate(results[:3]):
        assert [f["text"] for f in of_type(received, "final")] == [f"stream {index}"] * 2
        assert of_type(received, "error") == []


async def test_beyond_the_stream_limit_an_error_and_1013() -> None:
    app = create_app(settings(stream_max_concurrent=2))
    with running_server(app) as base:
        url = base.replace("http", "ws") + "/ws/transcribe"
        first, _ = await open_stream(url)
        second, _ = await open_stream(url)
        third = await websockets.connect(url)
        refused = [event async for event in events(third)]
        assert [e["code"] for e in refused] == ["too_many_streams"] and third.close_code == 1013
        await first.close()
        for _ in range(100):  # the slot is freed as soon as the server sees the close
            if app.state.services.streams.active < 2:
                break
            await asyncio.sleep(0.02)
        fourth, ready = await open_stream(url)
        assert ready["type"] == "ready"
        await asyncio.gather(second.close(), fourth.close())
        assert app.state.services.streams.snapshot()["streams_rejected_total"] == 1


async def test_idle_streams_are_finalised_then_closed_with_a_reason() -> None:
    with running_server(create_app(settings(stream_idle_timeout=0.6))) as base:
        ws, _ = await open_stream(base.replace("http", "ws") + "/ws/transcribe")
        await ws.send(json.dumps({"type": "start", "prompt": "last words"}))
        await send_audio(ws, np.concatenate([silence(0.3), tone(1.0)]))  # speech, then the client goes quiet
        received = [event async for event in events(ws)]
    received = [e for e in received if e["type"] != "partial"]
    assert [e["type"] for e in received] == ["final", "error"]
    assert received[0]["text"] == "last words" and received[1]["code"] == "idle_timeout"
    assert ws.close_code == 1008 and "idle" in ws.close_reason


async def test_sessions_end_at_the_maximum_length() -> None:
    with running_server(create_app(settings(stream_max_session_seconds=0.8))) as base:
        ws, _ = await open_stream(base.replace("http", "ws") + "/ws/transcribe")
        for _ in range(20):
            try:
                await ws.send(pcm(silence(0.1)))
            except websockets.ConnectionClosed:
                break
            await asyncio.sleep(0.1)
        received = [event async for event in events(ws)]
    assert [e["code"] for e in of_type(received, "error")] == ["session_too_long"]
    assert ws.close_code == 1008


async def test_a_client_that_disconnects_frees_everything_at_once() -> None:
    engine = GatedEngine()
    app = create_app(settings(max_batch_size=1, stream_partial_budget=0), engine=engine)
    services = app.state.services
    with running_server(app) as base:
        ws, _ = await open_stream(base.replace("http", "ws") + "/ws/transcribe")
        await send_audio(ws, utterances(1.0, 1.0, 1.0))  # three finals: one runs (blocked), the rest wait
        for _ in range(200):
            if len(engine.seconds) == 1 and services.streams.metrics.finals_pending == 3:
                break
            await asyncio.sleep(0.02)
        await ws.close()
        for _ in range(200):
            if services.streams.active == 0 and len(services.queue) == 0:
                break
            await asyncio.sleep(0.02)
        assert services.streams.active == 0 and len(services.queue) == 0
        assert services.streams.metrics.finals_pending == 0
        engine.gate.set()
        await asyncio.sleep(0.2)
    assert len(engine.seconds) == 1  # the queued finals were dropped, never run


async def test_a_model_that_cannot_keep_up_pushes_back_then_closes_1013() -> None:
    engine = GatedEngine()
    app = create_app(
        settings(stream_max_buffer_seconds=10, stream_idle_timeout=1.0, stream_partial_budget=0), engine=engine
    )
    with running_server(app) as base:
        ws, _ = await open_stream(base.replace("http", "ws") + "/ws/transcribe")
        with pytest.raises(websockets.ConnectionClosed):
            for _ in range(20):  # 20 × 1.5 s of speech; the server stops reading at 10 s buffered
                await send_audio(ws, np.concatenate([tone(1.0), silence(0.5)]))
            await asyncio.sleep(3)
            await ws.send(pcm(silence(0.1)))
        received = [event async for event in events(ws)]
        engine.gate.set()
    assert [e["code"] for e in of_type(received, "error")] == ["buffer_full"]
    assert ws.close_code == 1013


async def test_stream_work_is_queued_at_stream_priority_and_keeps_the_model_warm() -> None:
    app = create_app(settings())
    services = app.state.services
    priorities: list[int] = []
    submit = services.queue.submit
    touches = 0

    def recording_submit(payload: Any, **kwargs: Any) -> Any:
        priorities.append(kwargs["priority"])
        return submit(payload, **kwargs)

    def counting_touch() -> None:
        nonlocal touches
        touches += 1

    services.queue.submit = recording_submit  # type: ignore[method-assign]
    services.worker.touch = counting_touch  # type: ignore[method-assign]
    with running_server(app) as base:
        await run(base.replace("http", "ws") + "/ws/transcribe", utterances(1.0, 1.0))
        snapshot = services.streams.snapshot()
    assert priorities and set(priorities) == {0}
    assert touches >= 10  # every audio frame counts as activity
    assert snapshot["stream_finals_total"] == 2 and snapshot["stream_audio_seconds_total"] > 4
    assert 0 < snapshot["stream_decode_ratio"] < 3


def test_the_demo_page_is_served(server: str) -> None:
    page = httpx.get(server.replace("/ws/transcribe", "/demo").replace("ws://", "http://", 1))
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/ws/transcribe" in page.text


# --- the real engine -------------------------------------------------------------------------
def speech_like(text: str) -> np.ndarray:
    """espeak-ng speech when available (found by silero), else a tone (found by the energy VAD)."""
    if shutil.which("espeak-ng") is None:
        return tone(1.5)
    import io

    import soundfile as sf

    from asr_server.media.audio import resample

    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return resample(samples, rate, RATE)


async def test_a_stream_through_the_real_engine(request: pytest.FixtureRequest) -> None:
    try:
        checkpoint = request.getfixturevalue("hello_asr_dir")
    except pytest.FixtureLookupError:
        pytest.skip("the hello_asr_dir fixture (tiny 'hello world' checkpoint) is not available")
    vad = "silero" if shutil.which("espeak-ng") else "energy"
    app = create_app(
        # preload: the model loads at start-up, not inside the stream's event timeout
        settings(
            asr_engine="transformers", model_id=str(checkpoint), forced_aligner_id="", stream_vad=vad, preload=True
        )
    )
    audio = np.concatenate(
        [silence(0.5), speech_like("Good morning everyone."), silence(1.0), speech_like("Let us begin."), silence(1.0)]
    )
    with running_server(app) as base:
        received, ws = await run(base.replace("http", "ws") + "/ws/transcribe", audio, {"language": "en"})
    finals = of_type(received, "final")
    assert [f["text"] for f in finals] == ["hello world", "hello world"]
    assert all(f["language"] == "english" for f in finals) and ws.close_code == 1000

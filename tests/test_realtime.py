"""/v1/realtime: OpenAI's Realtime transcription sessions, driven by the official openai SDK (GA and
beta dialects) and by a raw client that sends exactly what the SDK sends (URL, headers, events).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
import websockets

from asr_server.config import Settings
from asr_server.engines import TranscribeItem, Transcript
from asr_server.engines.fake import FakeEngine
from asr_server.server import create_app

from support import running_server, tone

RATE = 24_000  # the Realtime API's PCM16 rate
API_KEY = "sk-test-key"


def b64(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def speech_then_pause(*lengths: float) -> np.ndarray:
    parts = [silence(0.4)]
    for length in lengths:
        parts += [tone(length, RATE), silence(1.0)]
    return np.concatenate(parts)


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"asr_engine": "fake", "stream_vad": "energy", "warmup": False, "log_level": "WARNING"}
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(create_app(settings())) as url:
        yield url


def sdk(base_url: str, api_key: str = "unused") -> openai.AsyncOpenAI:
    ws_base = base_url.replace("http", "ws") + "/v1"
    return openai.AsyncOpenAI(api_key=api_key, base_url=f"{base_url}/v1", websocket_base_url=ws_base)


async def until_completed(events: Any, count: int, timeout: float = 15.0) -> list[Any]:
    """Collect events from an SDK connection (or raw socket) until `count` transcriptions completed."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    iterator = events.__aiter__()
    while sum(event_type(e) == "conversation.item.input_audio_transcription.completed" for e in seen) < count:
        seen.append(await asyncio.wait_for(iterator.__anext__(), max(0.01, deadline - time.monotonic())))
    return seen


def event_type(event: Any) -> str:
    return event["type"] if isinstance(event, dict) else event.type


GA_SESSION = {
    "type": "transcription",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe", "prompt": "hello realtime", "language": "en"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500},
        }
    },
}


async def test_the_sdk_ga_client_gets_turns_deltas_and_completions(base_url: str) -> None:
    async with sdk(base_url).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        created = await connection.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        await connection.session.update(session=GA_SESSION)  # type: ignore[arg-type]
        updated = await connection.recv()
        assert updated.type == "session.updated"
        assert updated.session.audio.input.transcription.prompt == "hello realtime"
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 500
        audio = speech_then_pause(1.2, 2.0)
        for offset in range(0, audio.size, 4800):
            await connection.input_audio_buffer.append(audio=b64(audio[offset : offset + 4800]))
        events = await until_completed(connection, 2)
    items: dict[str, list[Any]] = {}
    for event in events:
        if getattr(event, "item_id", None):
            items.setdefault(event.item_id, []).append(event)
        elif event.type in ("conversation.item.added", "conversation.item.done"):
            items.setdefault(event.item.id, []).append(event)
    assert len(items) == 2
    previous = None
    for item_id, item_events in items.items():
        kinds = [e.type for e in item_events]
        assert kinds[:5] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        assert kinds[-1] == "conversation.item.input_audio_transcription.completed"
        deltas = "".join(e.delta for e in item_events if e.type.endswith(".delta"))
        completed = item_events[-1]
        assert completed.transcript == deltas == "hello realtime"
        assert completed.content_index == 0 and completed.usage.type == "duration"
        assert completed.languages[0].code == "en"
        committed = item_events[2]
        assert committed.previous_item_id == previous
        previous = item_id
        started, stopped = item_events[0], item_events[1]
        assert 0 <= started.audio_start_ms < stopped.audio_end_ms
    first_start = items[next(iter(items))][0].audio_start_ms
    assert first_start == pytest.approx(100, abs=80)  # speech at 400 ms, 300 ms of prefix padding


async def test_the_sdk_beta_client_commits_its_own_turns(base_url: str) -> None:
    async with sdk(base_url).beta.realtime.connect(model="gpt-4o-transcribe") as connection:
        created = json.loads(await connection._connection.recv())
        assert created["type"] == "transcription_session.created"
        session = {"input_audio_transcription": {"model": "whisper-1", "prompt": "manual turn"}, "turn_detection": None}
        await connection.transcription_session.update(session=session)  # type: ignore[arg-type]
        updated = await connection.recv()
        assert updated.type == "transcription_session.updated" and updated.session.turn_detection is None
        await connection.input_audio_buffer.commit()  # nothing appended yet
        error = await connection.recv()
        assert error.type == "error" and error.error.code == "input_audio_buffer_commit_empty"
        await connection.input_audio_buffer.append(audio=b64(np.concatenate([silence(0.3), tone(1.0, RATE)])))
        await connection.input_audio_buffer.clear()
        assert (await connection.recv()).type == "input_audio_buffer.cleared"
        await connection.input_audio_buffer.append(audio=b64(speech_then_pause(1.5)))
        await connection.input_audio_buffer.commit()
        events = await until_completed(connection, 1)
    kinds = [e.type for e in events]
    assert kinds == [
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert events[-1].transcript == "manual turn" and events[-1].item_id == events[0].item_id


async def test_a_committed_buffer_of_silence_is_not_sent_to_the_model() -> None:
    engine = FakeEngine()
    with running_server(create_app(settings(), engine=engine)) as base:
        async with sdk(base).realtime.connect(extra_query={"intent": "transcription"}) as connection:
            await connection.recv()
            no_vad = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
            await connection.session.update(session=no_vad)  # type: ignore[arg-type]
            await connection.recv()
            await connection.input_audio_buffer.append(audio=b64(silence(2.0)))
            await connection.input_audio_buffer.commit()
            events = await until_completed(connection, 1)
    assert events[-1].transcript == "" and engine.batches == []


class WordsEngine(FakeEngine):
    """Two words per second of audio, so a longer clip extends the text of a shorter one."""

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
        return [Transcript(" ".join(words[: int(item.audio.size / 16000 * 2)]), "English") for item in items]


async def test_deltas_during_speech_are_append_only_and_add_up_to_the_transcript() -> None:
    with running_server(create_app(settings(), engine=WordsEngine())) as base:
        async with sdk(base).realtime.connect(extra_query={"intent": "transcription"}) as connection:
            await connection.recv()
            audio = np.concatenate([silence(0.3), tone(4.5, RATE), silence(1.0)])
            for offset in range(0, audio.size, 2400):  # paced, so partials run while speech goes on
                await connection.input_audio_buffer.append(audio=b64(audio[offset : offset + 2400]))
                await asyncio.sleep(0.02)
            events = await until_completed(connection, 1)
    kinds = [e.type for e in events]
    deltas = [e.delta for e in events if e.type.endswith(".delta")]
    assert len(deltas) >= 2
    assert kinds.index("conversation.item.input_audio_transcription.delta") < kinds.index(
        "input_audio_buffer.speech_stopped"
    )  # text arrived while the speaker was still talking
    assert "".join(deltas) == events[-1].transcript
    assert events[-1].transcript.startswith("alpha bravo charlie")


async def test_a_raw_client_sending_what_the_sdk_sends_with_an_api_key() -> None:
    with running_server(create_app(settings(api_keys=API_KEY))) as base:
        url = base.replace("http", "ws") + "/v1/realtime?intent=transcription"
        # What AsyncOpenAI(api_key=...).realtime.connect(extra_query={"intent": "transcription"}) sends.
        headers = {"Authorization": f"Bearer {API_KEY}", "User-Agent": "AsyncOpenAI/Python 3.54.0"}
        async with websockets.connect(url, additional_headers=headers, max_size=None, compression=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps({"type": "session.update", "session": GA_SESSION}))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            audio = speech_then_pause(1.0)
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(audio)}))
            events = await until_completed(_json_events(ws), 1)
        assert events[-1]["transcript"] == "hello realtime"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, additional_headers={"Authorization": "Bearer wrong"})
        assert refused.value.response.status_code == 401
        # Browsers cannot set headers: OpenAI's browser clients put the key in a subprotocol.
        protocols = ["realtime", f"openai-insecure-api-key.{API_KEY}"]
        async with websockets.connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"


async def _json_events(ws: Any) -> Any:
    async for message in ws:
        yield json.loads(message)


async def test_bad_events_get_error_events_with_their_event_id(base_url: str) -> None:
    url = base_url.replace("http", "ws") + "/v1/realtime?intent=transcription"
    bad = [
        ("not json", "invalid_json"),
        (json.dumps({"type": "response.create", "event_id": "e1"}), "unsupported_event"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "***", "event_id": "e2"}), "invalid_value"),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
            "invalid_value",
        ),
        (json.dumps({"type": "session.update", "session": {"type": "realtime"}, "event_id": "e3"}), "invalid_value"),
        (
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
                }
            ),
            "invalid_value",
        ),
        (
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "transcription",
                        "audio": {"input": {"transcription": {"language": "klingon"}}},
                    },
                }
            ),
            "invalid_value",
        ),
        (json.dumps({"type": "input_audio_buffer.commit", "event_id": "e4"}), "input_audio_buffer_commit_empty"),
    ]
    async with websockets.connect(url) as ws:
        await ws.recv()
        errors = []
        for frame, _ in bad:
            await ws.send(frame)
            errors.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(speech_then_pause(1.0))}))
        events = await until_completed(_json_events(ws), 1)
    assert [e["type"] for e in errors] == ["error"] * len(bad)
    assert [e["error"]["code"] for e in errors] == [code for _, code in bad]
    assert errors[1]["error"]["event_id"] == "e1" and errors[2]["error"]["param"] == "audio"
    assert errors[4]["error"]["event_id"] == "e3" and errors[7]["error"]["event_id"] == "e4"
    assert events[-1]["transcript"] == "This is a test transcript."  # the stream went on


async def test_realtime_and_ws_streams_share_the_stream_limit() -> None:
    with running_server(create_app(settings(stream_max_concurrent=1))) as base:
        ws_url = base.replace("http", "ws")
        async with websockets.connect(f"{ws_url}/ws/transcribe") as first:
            await first.recv()
            async with websockets.connect(f"{ws_url}/v1/realtime?intent=transcription") as second:
                refused = json.loads(await second.recv())
                with pytest.raises(websockets.ConnectionClosed):
                    await second.recv()
            assert refused["type"] == "error" and refused["error"]["code"] == "too_many_streams"
            assert second.close_code == 1013


async def test_an_idle_realtime_session_is_closed_with_a_reason() -> None:
    with running_server(create_app(settings(stream_idle_timeout=0.5))) as base:
        async with websockets.connect(base.replace("http", "ws") + "/v1/realtime") as ws:
            received = []
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    received.append(json.loads(await ws.recv()))
    assert [e["type"] for e in received] == ["session.created", "error"]
    assert received[1]["error"]["code"] == "idle_timeout" and ws.close_code == 1008

"""stream=true on uploads: Server-Sent Events in OpenAI's shape, through the SDK and raw httpx."""

from __future__ import annotations

import itertools
import json
import re

import httpx
import numpy as np
import openai

from asr_server.config import Settings
from asr_server.engines import Engine, TranscribeItem, Transcript
from asr_server.server import create_app

from support import encode, running_server, wav_bytes

SECONDS = 95.0
STEP = 0.9 / (SECONDS * 16_000)


class RampEngine(Engine):
    """Reads which samples of a ramp it was given: "[first:last]", so joins can be checked exactly."""

    name = "ramp"
    loaded = True

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        return [
            Transcript(text=f"[{round(item.audio[0] / STEP)}:{round(item.audio[-1] / STEP)}]", language="English")
            for item in items
        ]


def _events(body: str) -> list[dict]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def test_segments_stream_in_order_without_overlap_or_gap() -> None:
    ramp = (np.arange(int(SECONDS * 16_000)) * STEP).astype(np.float32)
    app = create_app(Settings(asr_engine="fake", log_level="WARNING", warmup=False), engine=RampEngine())
    with running_server(app) as url:
        response = httpx.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("ramp.wav", encode(ramp, subtype="FLOAT"))},
            data={"stream": "true"},
            timeout=60,
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert events[-1]["type"] == "transcript.text.done"
    assert events[-1]["text"] == "".join(deltas)
    assert len(deltas) >= 4  # 95 s in ≤30 s segments: progress arrives in pieces
    ranges = [tuple(map(int, m)) for m in re.findall(r"\[(\d+):(\d+)\]", events[-1]["text"])]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(ramp) - 1
    assert all(nxt[0] == prev[1] + 1 for prev, nxt in itertools.pairwise(ranges))


def test_openai_sdk_stream_true() -> None:
    with running_server(create_app(Settings(asr_engine="fake", log_level="WARNING"))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        stream = client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.wav", wav_bytes(3.0)), prompt="streamed words", stream=True
        )
        events = list(stream)
    assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.done"]
    assert events[0].delta == "streamed words" and events[-1].text == "streamed words"


def test_stream_errors_are_4xx_before_streaming_starts() -> None:
    with running_server(create_app(Settings(asr_engine="fake", log_level="WARNING"))) as url:
        bad_format = httpx.post(
            f"{url}/transcribe",
            files={"file": ("a.wav", wav_bytes())},
            data={"stream": "true", "response_format": "srt"},
        )
        assert bad_format.status_code == 400 and bad_format.json()["error"]["param"] == "stream"
        empty = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", b"")}, data={"stream": "true"})
        assert empty.status_code == 400

"""The /demo page in headless Chromium with a fake microphone playing a WAV file: it shows a final.

Chromium is driven over the DevTools protocol with the `websockets` package (no playwright). The fake
engine echoes the page's context field, so the final text is known; the energy VAD finds the tone
bursts of the WAV as utterances.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import websockets

from asr_server.config import Settings
from asr_server.server import create_app

from chromium import chromium, needs_chromium
from support import encode, running_server, tone

pytestmark = needs_chromium


def microphone(wav: Path) -> list[str]:
    """Chromium flags that play `wav` as the microphone, granted without asking."""
    return [
        "--autoplay-policy=no-user-gesture-required",  # the AudioContext starts without a click
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
    ]


async def evaluate_until(devtools_url: str, expression: str, timeout: float) -> object:
    """Evaluate `expression` in the page every 200 ms until it is truthy; return its value."""
    ids = itertools.count(1)
    async with websockets.connect(devtools_url, max_size=None) as cdp:
        deadline = time.monotonic() + timeout
        value: object = None
        while time.monotonic() < deadline:
            request_id = next(ids)
            call = {"expression": expression, "returnByValue": True}
            await cdp.send(json.dumps({"id": request_id, "method": "Runtime.evaluate", "params": call}))
            while True:
                reply = json.loads(await cdp.recv())
                if reply.get("id") == request_id:
                    break
            value = reply.get("result", {}).get("result", {}).get("value")
            if value:
                return value
            await asyncio.sleep(0.2)
        return value


async def test_demo_page_shows_a_final_transcript(tmp_path: Path) -> None:
    rate = 48_000
    silence = np.zeros(rate // 2, np.float32)
    speech = np.concatenate([silence, tone(1.5, rate), silence, silence, tone(1.0, rate, 330.0), silence, silence])
    wav = tmp_path / "mic.wav"
    wav.write_bytes(encode(speech, rate, "WAV", "PCM_16"))
    settings = Settings(asr_engine="fake", stream_vad="energy", warmup=False, log_level="WARNING")
    prompt = "captions from the fake microphone"
    with running_server(create_app(settings)) as base:
        query = urllib.parse.urlencode({"autostart": "1", "prompt": prompt, "language": "en"})
        with chromium(tmp_path, f"{base}/demo?{query}", microphone(wav)) as devtools:
            finals = await evaluate_until(
                devtools, "[...document.querySelectorAll('#finals .final')].map(p => p.textContent)", timeout=30
            )
            page_status = await evaluate_until(devtools, "document.getElementById('status').textContent", 1)
    assert finals, f"no final transcript appeared; page status: {page_status!r}"
    assert any(prompt in text for text in finals), finals  # type: ignore[union-attr]

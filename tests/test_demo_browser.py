"""The /demo page in headless Chromium with a fake microphone playing a WAV file: it shows a final.

Chromium is driven over the DevTools protocol with the `websockets` package (no playwright). The fake
engine echoes the page's context field, so the final text is known; the energy VAD finds the tone
bursts of the WAV as utterances.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import websockets

from asr_server.config import Settings
from asr_server.server import create_app

from support import encode, running_server, tone

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


@contextlib.contextmanager
def chromium(tmp_path: Path, wav: Path, url: str) -> Iterator[str]:
    """Start headless Chromium on `url` with `wav` as its microphone; yield the page's DevTools URL."""
    profile = tmp_path / "profile"
    args = [
        str(CHROMIUM),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",  # the AudioContext starts without a click
        "--use-fake-ui-for-media-stream",  # grant the microphone without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        url,
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                pages = [t for t in json.load(response) if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
        with chromium(tmp_path, wav, f"{base}/demo?{query}") as devtools:
            finals = await evaluate_until(
                devtools, "[...document.querySelectorAll('#finals .final')].map(p => p.textContent)", timeout=30
            )
            page_status = await evaluate_until(devtools, "document.getElementById('status').textContent", 1)
    assert finals, f"no final transcript appeared; page status: {page_status!r}"
    assert any(prompt in text for text in finals), finals  # type: ignore[union-attr]

"""The /demo page's "Subtitle a file" section in headless Chromium: a file set on its input is sent to /v1/jobs,
followed to the end, and offered as SRT and VTT downloads (Blob URLs); a file the server refuses shows the error
envelope's message. Also with API keys: the page's key field is sent as the Authorization header.

Chromium is driven over the DevTools protocol with the `websockets` package, as in tests/test_demo_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import srt
import websockets
import webvtt

from asr_server.config import Settings
from asr_server.engines import TranscribeItem, Transcript
from asr_server.engines.fake import FakeEngine
from asr_server.server import create_app

from chromium import chromium, needs_chromium
from support import encode, running_server, speechlike, tone

pytestmark = needs_chromium

PROMPT = "Subtitles made in the browser."
LINKS_READY = "!document.getElementById('job-links').hidden && document.getElementById('job-srt').href"
PAGE_ERROR = "document.getElementById('job-status').className === 'error' && document.getElementById('job-status')"


class Page:
    """One DevTools connection to the page: commands, and expressions evaluated in it."""

    def __init__(self, cdp: websockets.ClientConnection) -> None:
        self._cdp = cdp
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        await self._cdp.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self._cdp.recv())
            if reply.get("id") == request_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def evaluate_until(self, expression: str, timeout: float) -> Any:
        """Evaluate `expression` every 200 ms until it is truthy; return its value (the last one on timeout)."""
        deadline = time.monotonic() + timeout
        value = await self.evaluate(expression)
        while not value and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            value = await self.evaluate(expression)
        return value

    async def choose_file(self, selector: str, path: Path) -> None:
        """Set a file input's file, as a person choosing it would (input and change events fire)."""
        found = await self.call("Runtime.evaluate", expression=f"document.querySelector({json.dumps(selector)})")
        await self.call("DOM.setFileInputFiles", files=[str(path)], objectId=found["result"]["objectId"])

    async def open(self, url: str, headers: dict[str, str] | None = None) -> None:
        """Navigate to `url` (with `headers` on the requests that load it) and wait for the jobs section."""
        await self.call("Network.enable")
        await self.call("Network.setExtraHTTPHeaders", headers=headers or {})
        await self.call("Page.navigate", url=url)
        loaded = "document.readyState === 'complete' && !!document.getElementById('job-file')"
        if not await self.evaluate_until(loaded, 15):
            raise RuntimeError(f"{url} did not load")
        await self.call("Network.setExtraHTTPHeaders", headers={})  # from here on, only what the page sends


@contextlib.asynccontextmanager
async def demo_page(
    tmp_path: Path,
    settings: Settings,
    query: dict[str, str],
    headers: dict[str, str] | None = None,
    engine: FakeEngine | None = None,
) -> AsyncIterator[Page]:
    with running_server(create_app(settings, engine=engine)) as base, chromium(tmp_path, "about:blank") as devtools:
        async with websockets.connect(devtools, max_size=None) as cdp:
            page = Page(cdp)
            await page.open(f"{base}/demo" + (f"?{urllib.parse.urlencode(query)}" if query else ""), headers)
            yield page


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(asr_engine="fake", data_dir=tmp_path / "data", warmup=False, log_level="WARNING", **values)


async def test_a_chosen_file_is_subtitled_and_offered_as_srt_and_vtt(tmp_path: Path) -> None:
    media = tmp_path / "interview.wav"
    media.write_bytes(encode(speechlike(4.0, seed=3)))
    async with demo_page(tmp_path, settings(tmp_path), {"prompt": PROMPT}) as page:
        await page.choose_file("#job-file", media)
        ready = await page.evaluate_until(LINKS_READY, timeout=30)
        status = await page.evaluate("document.getElementById('job-status').textContent")
        assert ready, f"no download links appeared; the page says {status!r}"
        assert status == "Done."
        assert await page.evaluate("document.getElementById('job-percent').textContent") == "100%"
        links = await page.evaluate(
            "[...document.querySelectorAll('#job-links a')].map(a => [a.download, a.href.slice(0, 5)])"
        )
        assert links == [["interview.srt", "blob:"], ["interview.vtt", "blob:"]]
        srt_text = await page.evaluate("fetch(document.getElementById('job-srt').href).then(r => r.text())")
        vtt_text = await page.evaluate("fetch(document.getElementById('job-vtt').href).then(r => r.text())")
    cues = list(srt.parse(srt_text))
    assert [cue.content for cue in cues] == [PROMPT]
    assert cues[-1].end.total_seconds() == pytest.approx(4.0, abs=0.05)
    vtt_file = tmp_path / "page.vtt"
    vtt_file.write_text(vtt_text)
    assert [caption.text for caption in webvtt.read(str(vtt_file))] == [PROMPT]


class SlowEngine(FakeEngine):
    """The fake engine at a fixed pace per batch, so that a long file's job is seen part done."""

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        time.sleep(0.8)
        return super().transcribe(items)


async def test_the_progress_bar_shows_the_percent_and_the_time_left(tmp_path: Path) -> None:
    media = tmp_path / "lecture.flac"
    media.write_bytes(encode(tone(300.0), fmt="FLAC"))  # five minutes: a job of several pieces
    slow = settings(tmp_path, pieces_in_flight=1)
    async with demo_page(tmp_path, slow, {}, engine=SlowEngine()) as page:
        await page.evaluate(
            "window.seen = []; new MutationObserver(() => seen.push("
            "[document.getElementById('job-percent').textContent, document.getElementById('job-eta').textContent]"
            ")).observe(document.getElementById('job-meta'), {subtree: true, childList: true, characterData: true})"
        )
        await page.choose_file("#job-file", media)
        assert await page.evaluate_until(LINKS_READY, timeout=30)
        seen = await page.evaluate("seen")
        bar = await page.evaluate("document.getElementById('job-progress').value")
    running = [(percent, eta) for percent, eta in seen if re.fullmatch(r"\d+:\d\d left", eta)]
    assert running, seen
    assert all(0 < int(percent.rstrip("%")) < 100 for percent, _ in running), running
    assert bar == 1


async def test_a_refused_file_shows_the_error_envelopes_message(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not audio")
    async with demo_page(tmp_path, settings(tmp_path), {}) as page:
        await page.choose_file("#job-file", notes)
        shown = await page.evaluate_until(f"{PAGE_ERROR}.textContent", timeout=20)
        assert shown and shown.startswith("Error: unsupported file format '.txt'"), shown
        assert await page.evaluate("document.getElementById('job-links').hidden") is True


async def test_the_pages_api_key_is_sent_with_the_job(tmp_path: Path) -> None:
    media = tmp_path / "keyed.wav"
    media.write_bytes(encode(speechlike(3.0, seed=4)))
    keyed = settings(tmp_path, api_keys=["page-key"])
    # With API_KEYS set, /demo itself needs the key (a header a browser can add through an extension or a proxy):
    # the test sends it for the page's own load only; the jobs requests carry what the page's key field holds.
    opener = {"Authorization": "Bearer page-key"}
    async with demo_page(tmp_path, keyed, {"api_key": "wrong-key"}, opener) as page:
        await page.choose_file("#job-file", media)
        refused = await page.evaluate_until(f"{PAGE_ERROR}.textContent", timeout=20)
        assert refused and refused.startswith("Error: "), refused
        assert "HTTP" not in refused  # the envelope's message, not a bare status
        await page.evaluate("document.getElementById('apikey').value = 'page-key'")
        await page.choose_file("#job-file", media)
        assert await page.evaluate_until(LINKS_READY, timeout=30)
        srt_text = await page.evaluate("fetch(document.getElementById('job-srt').href).then(r => r.text())")
    assert [cue.content for cue in srt.parse(srt_text)] == ["This is a test transcript."]

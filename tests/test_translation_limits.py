"""A translation LLM that answers too much or not text: a clear 502 with the source kept, the event loop free."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from asr_server.config import Settings
from asr_server.server import create_app

from llm_stub import HUGE_CHARS, LLMStub
from support import running_server

THREE_CUES = """1
00:00:01,000 --> 00:00:03,500
Good morning, everyone.

2
00:00:04,000 --> 00:00:06,250
Today we talk about speech recognition.

3
00:00:07,000 --> 00:00:08,000
Thank you!
"""


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMStub]:
    stub = LLMStub().start()
    yield stub
    stub.stop()


def _settings(llm: LLMStub, model: str) -> Settings:
    return Settings(
        asr_engine="fake",
        log_level="WARNING",
        openai_base_url=llm.base_url,
        translate_model=model,
        translate_timeout=10.0,
        translate_max_retries=0,
    )


def _translate(url: str, name: str, body: bytes, response_format: str = "json") -> httpx.Response:
    return httpx.post(
        f"{url}/translate",
        files={"file": (name, body)},
        data={"target_language": "zh", "response_format": response_format},
        timeout=120,
    )


def _assert_502_keeps_the_source(response: httpx.Response, source: str) -> None:
    assert response.status_code == 502, response.text[:500]
    body = response.json()
    assert body["error"]["type"] == "upstream_error" and body["error"]["code"] == "translation_failed"
    assert body["source_text"] == source


def test_health_answers_while_a_one_megabyte_answer_is_handled(llm: LLMStub) -> None:
    latencies: list[float] = []
    with running_server(create_app(_settings(llm, "huge"))) as url:
        outcome: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: outcome.append(_translate(url, "talk.srt", THREE_CUES.encode())))
        started = time.monotonic()
        worker.start()
        with httpx.Client(base_url=url, timeout=60) as http:
            while worker.is_alive() and time.monotonic() - started < 60:
                sent = time.monotonic()
                assert http.get("/health").status_code == 200
                latencies.append(time.monotonic() - sent)
                time.sleep(0.05)
        worker.join(60)
    assert outcome, "the translation request did not finish"
    response = outcome[0]
    assert llm.count("huge") >= 1
    assert max(latencies) < 0.5, (
        f"/health took {max(latencies):.2f} s while a {HUGE_CHARS:,}-character answer was handled"
    )
    # The answer is ~4,000 times the source: refused with a clear message, the cues kept.
    _assert_502_keeps_the_source(
        response, "Good morning, everyone. Today we talk about speech recognition. Thank you!"  # one text, joined
    )
    assert "characters" in response.json()["error"]["message"]
    assert "source_subtitles" in response.json()


@pytest.mark.parametrize("model", ["content-number", "content-list", "garbage-body", "not-a-completion"])
def test_an_answer_that_is_not_text_is_502_with_the_source_kept(llm: LLMStub, model: str) -> None:
    with running_server(create_app(_settings(llm, model))) as url:
        text_response = _translate(url, "notes.txt", b"Good morning, everyone. Thank you!")
        srt_response = _translate(url, "talk.srt", THREE_CUES.encode(), response_format="srt")
    _assert_502_keeps_the_source(text_response, "Good morning, everyone. Thank you!")
    assert srt_response.status_code == 502, srt_response.text[:300]
    assert "Today we talk about speech recognition." in srt_response.json()["source_subtitles"]

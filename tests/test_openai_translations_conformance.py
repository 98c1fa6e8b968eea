"""/v1/audio/translations against the openai SDK's types, strictly, with a scripted LLM on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.audio import Translation, TranslationVerbose

from asr_server.config import Settings
from asr_server.server import create_app

from llm_stub import LLMStub, fake_translate
from openai_strict import strict
from support import encode, running_server, speechlike

SUBTITLES = """1
00:00:01,000 --> 00:00:03,500
Good morning,
everyone.

2
00:00:04,000 --> 00:00:06,250
Today we talk about speech.
"""


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    llm = LLMStub().start()
    settings = Settings(
        asr_engine="fake", log_level="WARNING", openai_base_url=llm.base_url, translate_model="correct"
    )
    try:
        with running_server(create_app(settings)) as url:
            yield url
    finally:
        llm.stop()


def _translate(url: str, name: str, data: bytes, **fields: str) -> httpx.Response:
    response = httpx.post(
        f"{url}/v1/audio/translations", files={"file": (name, data)}, data={"model": "whisper-1", **fields}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response


def test_json_and_verbose_json_give_one_text(base_url: str) -> None:
    plain = strict(Translation, _translate(base_url, "talk.srt", SUBTITLES.encode(), target_language="zh").json())
    verbose_body = _translate(
        base_url, "talk.srt", SUBTITLES.encode(), target_language="zh", response_format="verbose_json"
    ).json()
    verbose = strict(TranslationVerbose, verbose_body)
    assert verbose.text == plain.text and "\n" not in verbose.text
    assert verbose.text == "".join(fake_translate(s.text, "zh") for s in verbose.segments or [])  # CJK: no spaces
    assert verbose.duration == pytest.approx(6.25)  # a subtitle upload lasts until its last cue ends
    for segment in verbose.segments or []:
        assert segment.tokens == [] and segment.no_speech_prob == 0.0  # no audio, no speech recognition


def test_audio_verbose_json_through_the_sdk(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    raw = client.audio.translations.with_raw_response.create(
        model="whisper-1",
        file=("talk.wav", encode(speechlike(6.0, seed=5))),
        prompt="Hello world. This is a test.",
        response_format="verbose_json",
        temperature=0.2,
    )
    body = raw.http_response.json()
    result = strict(TranslationVerbose, body)
    assert raw.parse().text == result.text
    assert result.language == "english" and result.duration == pytest.approx(6.0)
    segments = result.segments or []
    assert segments and all(s.temperature == pytest.approx(0.2) for s in segments)
    # The speech recognition's tokens of each source segment; all of them, in order, across the segments.
    assert all(s.tokens and s.avg_logprob <= 0 for s in segments)
    assert [seg["source_text"] for seg in body["segments"]] and result.text == " ".join(s.text for s in segments)
    plain = client.audio.translations.with_raw_response.create(
        model="whisper-1", file=("talk.wav", encode(speechlike(6.0, seed=5))), prompt="Hello world."
    )
    strict(Translation, plain.http_response.json())

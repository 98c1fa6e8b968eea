"""/translate and /v1/audio/translations through a real server, a scripted LLM on loopback and the SDK."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
import srt

from asr_server.config import Settings
from asr_server.server import create_app

from llm_stub import LLMStub, fake_translate
from support import encode, free_port, running_server, speechlike

ENGLISH_SRT = """1
00:00:01,000 --> 00:00:03,500
Good morning, everyone.

2
00:00:04,000 --> 00:00:06,250
Today we talk about
speech recognition.

3
01:02:03,004 --> 01:02:05,999
Thank you!
"""
CHINESE_SPEECH = "大家好，欢迎来到今天的讲座。我们将讨论语音识别技术。谢谢大家！"


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMStub]:
    stub = LLMStub().start()
    yield stub
    stub.stop()


def _app_settings(llm: LLMStub, model: str = "correct", **overrides: object) -> Settings:
    return Settings(
        asr_engine="fake",
        log_level="WARNING",
        openai_base_url=llm.base_url,
        translate_model=model,
        translate_timeout=1.0,
        translate_max_retries=1,
        **overrides,
    )


@pytest.fixture(scope="module")
def base_url(llm: LLMStub) -> Iterator[str]:
    with running_server(create_app(_app_settings(llm))) as url:
        yield url


def _timings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "-->" in line]


def test_english_srt_file_to_chinese_keeps_every_timing(base_url: str, llm: LLMStub) -> None:
    llm.reset()
    response = httpx.post(
        f"{base_url}/translate",
        files={"file": ("talk.srt", ENGLISH_SRT.encode())},
        data={"target_language": "zh-CN", "response_format": "srt"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert _timings(response.text) == _timings(ENGLISH_SRT)  # byte for byte
    parsed = list(srt.parse(response.text))
    source = list(srt.parse(ENGLISH_SRT))
    assert [s.index for s in parsed] == [s.index for s in source]
    for got, src in zip(parsed, source, strict=True):
        expected = fake_translate(src.content.replace("\n", " "), "zh")
        assert "".join(got.content.split()) == "".join(expected.split())
    assert llm.count() >= 1


def test_chinese_audio_to_english_srt(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/translate",
        files={"file": ("talk.wav", encode(speechlike(15.0, seed=2)))},
        data={"target_language": "en", "response_format": "srt", "prompt": CHINESE_SPEECH, "source_language": "zh"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    parsed = list(srt.parse(response.text))
    assert parsed and all(sub.content.startswith("(en) ") for sub in parsed)
    assert all(0 <= s.start.total_seconds() < s.end.total_seconds() <= 15.0 for s in parsed)


def test_json_carries_source_and_translation(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/translate",
        files={"file": ("talk.wav", encode(speechlike(5.0, seed=1)))},
        data={"target_language": "en", "prompt": CHINESE_SPEECH, "source_language": "zh"},
        timeout=60,
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["source_text"] == CHINESE_SPEECH and body["source_language"] == "zh"
    assert body["target_language"] == "en" and body["text"].startswith("(en)")
    assert body["duration"] == pytest.approx(5.0)


def test_same_language_makes_no_llm_call(base_url: str, llm: LLMStub) -> None:
    llm.reset()
    response = httpx.post(
        f"{base_url}/translate",
        files={"file": ("talk.wav", encode(speechlike(4.0, seed=1)))},
        data={"target_language": "English", "source_language": "en", "prompt": "Already English."},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["text"] == "Already English."
    assert llm.count() == 0


def test_openai_sdk_translations(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    result = client.audio.translations.create(
        model="whisper-1", file=("talk.wav", encode(speechlike(4.0, seed=5))), prompt=CHINESE_SPEECH
    )
    assert result.text.startswith("(en)")
    chinese = client.audio.translations.create(
        model="whisper-1",
        file=("talk.wav", encode(speechlike(4.0, seed=5))),
        prompt="Hello world.",
        extra_body={"target_language": "zh"},
    )
    assert chinese.text == fake_translate("Hello world.", "zh")
    vtt = client.audio.translations.create(
        model="whisper-1",
        file=("talk.wav", encode(speechlike(6.0, seed=6))),
        prompt=CHINESE_SPEECH,
        response_format="vtt",
    )
    assert isinstance(vtt, str) and vtt.startswith("WEBVTT")


def test_vtt_file_to_srt_and_untranslated_header(llm: LLMStub) -> None:
    vtt = "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nfine line\n\n00:00:03.000 --> 00:00:04.000\nxyzzy line\n"
    with running_server(create_app(_app_settings(llm, model="missing"))) as url:
        response = httpx.post(
            f"{url}/translate",
            files={"file": ("in.vtt", vtt.encode())},
            data={"target_language": "zh", "response_format": "srt"},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-untranslated-cues"] == "2"
    parsed = list(srt.parse(response.text))
    assert [p.content for p in parsed][1] == "xyzzy line"  # kept in the source language
    assert [(p.start.total_seconds(), p.end.total_seconds()) for p in parsed] == [(1.0, 2.0), (3.0, 4.0)]


@pytest.mark.parametrize(("model", "status", "code"), [("500", 502, "translation_failed"), ("slow", 504, None)])
def test_llm_failure_keeps_the_transcript(llm: LLMStub, model: str, status: int, code: str | None) -> None:
    with running_server(create_app(_app_settings(llm, model=model))) as url:
        response = httpx.post(
            f"{url}/translate",
            files={"file": ("talk.wav", encode(speechlike(4.0, seed=1)))},
            data={"target_language": "en", "prompt": CHINESE_SPEECH},
            timeout=60,
        )
    assert response.status_code == status, response.text
    body = response.json()
    assert body["source_text"] == CHINESE_SPEECH
    if code:
        assert body["error"]["code"] == code


def test_llm_unreachable_is_502(llm: LLMStub) -> None:
    settings = _app_settings(llm)
    settings.openai_base_url = f"http://127.0.0.1:{free_port()}/v1"
    with running_server(create_app(settings)) as url:
        response = httpx.post(
            f"{url}/translate",
            files={"file": ("a.txt", b"Hello there.")},
            data={"target_language": "zh"},
            timeout=60,
        )
    assert response.status_code == 502
    assert response.json()["source_text"] == "Hello there."


def test_not_configured_is_503_and_the_rest_works() -> None:
    with running_server(create_app(Settings(asr_engine="fake", log_level="WARNING"))) as url:
        response = httpx.post(
            f"{url}/translate", files={"file": ("a.txt", b"Hello.")}, data={"target_language": "zh"}, timeout=30
        )
        assert response.status_code == 503
        message = response.json()["error"]["message"]
        assert "OPENAI_BASE_URL" in message and "TRANSLATE_MODEL" in message
        ok = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", encode(speechlike(2.0, 1)))}, timeout=30)
        assert ok.status_code == 200


@pytest.mark.parametrize(
    ("files", "data", "status", "param"),
    [
        ({"file": ("a.txt", b"Hello.")}, {"target_language": "fr"}, 400, "target_language"),
        ({"file": ("a.txt", b"Hello.")}, {"target_language": "en", "response_format": "srt"}, 400, "response_format"),
        ({"file": ("a.srt", b"not a subtitle file at all")}, {"target_language": "zh"}, 400, "file"),
        ({"file": ("a.txt", b"\xff\xfe\x00bad")}, {"target_language": "zh"}, 400, "file"),
        ({"file": ("a.txt", b"   ")}, {"target_language": "zh"}, 400, "file"),
    ],
)
def test_bad_translation_requests(base_url: str, files: dict, data: dict, status: int, param: str) -> None:
    response = httpx.post(f"{base_url}/translate", files=files, data=data, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    if param == "target_language":
        assert "en" in error["message"] and "zh" in error["message"]

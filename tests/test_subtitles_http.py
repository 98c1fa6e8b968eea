"""Subtitles through HTTP with the fake engine (its transcript is the prompt), checked by parsing."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt

from asr_server.config import Settings
from asr_server.server import create_app
from asr_server.text.line_breaking import display_width

from support import encode, running_server, speechlike

SR = 16_000
TEXTS = {
    "english": "Good morning everyone. Today we talk about speech recognition, which turns audio into text! "
    "It works in many languages, and it is fast. Does it handle long sentences with many clauses and "
    "commas, like this one, without breaking the rules? We will see.",
    "chinese": "大家好，欢迎来到今天的讲座。我们将讨论语音识别技术的最新进展，以及它在实际应用中的表现。"
    "这个模型支持三十种语言！你准备好了吗？",
    "mixed": "今天我们用 Qwen3-ASR 做 speech recognition 的演示，效果非常好。接下来看 subtitle 的部分。",
    "japanese": "皆さん、こんにちは。今日は音声認識について話します。このモデルはとても速いです！",
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(create_app(Settings(asr_engine="fake", log_level="WARNING"))) as url:
        yield url


def _no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def check_cues(subs: list[tuple[float, float, str]], text: str, duration: float, width: int = 42) -> None:
    """Every rule a parsed subtitle file must obey."""
    assert subs, "no cues"
    assert _no_space("".join(t for _, _, t in subs)) == _no_space(text)  # text preserved, in order
    previous_end = -1.0
    for start, end, body in subs:
        assert 0 <= start < end <= duration + 1e-3
        assert start >= previous_end + 0.08 - 1e-3  # min gap, strictly ordered, no overlap
        assert end - start <= 7.0 + 1e-3
        lines = body.split("\n")
        assert 1 <= len(lines) <= 2
        assert all(display_width(line) <= width for line in lines)
        previous_end = end


@pytest.mark.parametrize("language", sorted(TEXTS))
def test_srt_obeys_the_rules(base_url: str, language: str) -> None:
    duration = 30.0
    audio = encode(speechlike(duration, seed=len(language)))
    response = httpx.post(
        f"{base_url}/transcribe",
        files={"file": ("talk.wav", audio)},
        data={"response_format": "srt", "prompt": TEXTS[language], "subtitle_mode": "fast"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-subrip")
    assert response.headers["x-subtitle-mode"] == "fast"
    parsed = list(srt.parse(response.text))
    assert [sub.index for sub in parsed] == list(range(1, len(parsed) + 1))
    check_cues([(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in parsed], TEXTS[language], duration)
    if language == "mixed":  # spaces around Latin words survive
        joined = " ".join(s.content.replace("\n", " ") for s in parsed)
        assert "用 Qwen3-ASR" in joined and "speech recognition 的" in joined and "subtitle 的" in joined
    if language == "chinese":
        assert " " not in "".join(s.content for s in parsed)


def test_vtt_through_the_openai_sdk(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x")
    duration = 20.0
    body = client.audio.transcriptions.create(
        model="whisper-1",
        file=("talk.wav", encode(speechlike(duration, seed=3))),
        response_format="vtt",
        prompt=TEXTS["english"],
    )
    assert isinstance(body, str) and body.startswith("WEBVTT")
    captions = webvtt.from_buffer(io.StringIO(body)).captions
    check_cues(
        [(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000, c.text) for c in captions],
        TEXTS["english"],
        duration,
    )


def test_verbose_json_segments_and_words_through_the_sdk(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x")
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("talk.wav", encode(speechlike(20.0, seed=4))),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        prompt=TEXTS["english"],
        language="en",
    )
    assert result.text == TEXTS["english"]
    assert result.segments and result.words
    assert " ".join(w.word for w in result.words) == TEXTS["english"]
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and all(0 <= w.start <= w.end <= 20.0 for w in result.words)
    assert _no_space("".join(s.text for s in result.segments)) == _no_space(TEXTS["english"])


def test_hour_long_audio_timestamps(base_url: str) -> None:
    """Over an hour of (mostly silent, FLAC-compressed) audio: valid HH:MM:SS past 01:00:00."""
    duration = 3725.0
    samples = np.zeros(int(duration * 8_000), np.float32)
    burst = speechlike(3.0, seed=9)[::2]  # 8 kHz
    for at in (10.0, 1800.0, 3700.0):
        samples[int(at * 8000) : int(at * 8000) + len(burst)] = burst
    app = create_app(Settings(asr_engine="fake", log_level="WARNING", max_audio_seconds=4000))
    with running_server(app) as url:
        response = httpx.post(
            f"{url}/transcribe",
            files={"file": ("long.flac", encode(samples, 8_000, "FLAC"))},
            data={"response_format": "srt", "prompt": "First words. Middle words. Last words at the end."},
            timeout=300,
        )
    assert response.status_code == 200, response.text
    parsed = list(srt.parse(response.text))
    assert parsed[-1].end.total_seconds() > 3600
    assert parsed[-1].end.total_seconds() <= duration
    assert ",1000" not in response.text


def test_bad_cue_rules_are_400(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/transcribe",
        files={"file": ("a.wav", encode(speechlike(3.0, 1)))},
        data={"response_format": "srt", "max_lines": "0"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_lines"

"""OpenAI conformance of /v1/audio/transcriptions and /v1/models: every response format and the stream,
validated strictly with the official openai SDK's own types, through raw HTTP and through the SDK."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types import Model
from openai.types.audio import (
    Transcription,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
)

from asr_server.config import Settings
from asr_server.engines import Engine, TranscribeItem, Transcript
from asr_server.server import create_app
from asr_server.services.segments import SpeechFrames, no_speech_probability

from openai_strict import sse_events, strict
from support import encode, running_server, speechlike, wav_bytes

SERVED = "Qwen/Qwen3-ASR-0.6B"
RAMP_STEP = 1e-6  # the ramp engine's audio: sample i has the value i * RAMP_STEP


class RampTokenEngine(Engine):
    """Knows where in the upload each clip starts (the audio is a ramp) and answers eight words for it, one
    token per word: ids `start * 10 + k`, log-probability -(k + 1) / 10, so the expected tokens of any
    request are known without the code under test."""

    name = "ramp-tokens"
    loaded = True

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        out = []
        for item in items:
            start = round(float(item.audio[0]) / RAMP_STEP)
            words = [f"{'' if k == 0 else ' '}w{start}n{k}{'.' if k in (3, 7) else ''}" for k in range(8)]
            out.append(
                Transcript(
                    text="".join(words),
                    language="English",
                    tokens=tuple(start * 10 + k for k in range(8)),
                    logprobs=tuple(-(k + 1) / 10 for k in range(8)),
                    token_bytes=tuple(word.encode() for word in words),
                )
            )
        return out


def _ramp(seconds: float) -> bytes:
    return encode((np.arange(int(seconds * 16_000)) * RAMP_STEP).astype(np.float32), subtype="FLOAT")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    settings = Settings(asr_engine="fake", model_id=SERVED, log_level="WARNING", warmup=False)
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def ramp_url() -> Iterator[str]:
    settings = Settings(asr_engine="fake", log_level="WARNING", warmup=False, align_chunk_seconds=10.0)
    with running_server(create_app(settings, engine=RampTokenEngine())) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def _post(url: str, data: dict[str, Any], audio: bytes | None = None) -> httpx.Response:
    files = {"file": ("clip.wav", audio if audio is not None else wav_bytes(2.3))}
    return httpx.post(f"{url}/v1/audio/transcriptions", files=files, data=data, timeout=60)


# --- every response format, strictly -----------------------------------------------------------
def test_json_validates_strictly_with_duration_usage(base_url: str) -> None:
    response = _post(base_url, {"model": "whisper-1", "prompt": "one two three"})
    result = strict(Transcription, response.json())
    assert result.text == "one two three"
    assert response.json()["usage"] == {"type": "duration", "seconds": 3}  # 2.3 s, rounded up as OpenAI bills


def test_verbose_json_validates_strictly(base_url: str) -> None:
    response = _post(base_url, {"response_format": "verbose_json", "prompt": "First part. Second part here."})
    body = response.json()
    result = strict(TranscriptionVerbose, body)
    assert result.segments and result.words is None
    assert body["usage"] == {"type": "duration", "seconds": 3}
    for segment in result.segments:
        assert segment.seek == int(segment.start * 100)
        assert segment.temperature == 0.0
        assert segment.tokens and segment.avg_logprob <= 0.0
        assert 0.0 <= segment.no_speech_prob <= 1.0
        data = segment.text.encode()
        assert segment.compression_ratio == pytest.approx(len(data) / len(zlib.compress(data)))


@pytest.mark.parametrize("response_format", ["json", "verbose_json", "text", "srt", "vtt"])
def test_every_format_through_the_sdk_raw_response(client: openai.OpenAI, response_format: str) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("clip.wav", wav_bytes(2.0)), response_format=response_format, prompt="hi there"
    )
    parsed = raw.parse()
    if response_format == "json":
        strict(Transcription, raw.http_response.json())
        assert parsed.text == "hi there"
    elif response_format == "verbose_json":
        strict(TranscriptionVerbose, raw.http_response.json())
        assert parsed.segments[0].text == "hi there"
    else:
        assert isinstance(parsed, str) and "hi there" in parsed


# --- segments: tokens, avg_logprob, no_speech_prob -------------------------------------------
def test_segment_tokens_concatenate_to_the_engine_tokens(ramp_url: str) -> None:
    seconds = 35.0  # 10 s chunks at most (ALIGN_CHUNK_SECONDS=10), each its own engine output
    response = _post(ramp_url, {"response_format": "verbose_json", "temperature": "0.4"}, _ramp(seconds))
    result = strict(TranscriptionVerbose, response.json())
    segments = result.segments or []
    words = result.text.split()
    assert len(words) % 8 == 0 and len(words) >= 8 * 4  # chunks are cut at the quietest point before 10 s
    # The engine's tokens, read from the text: word w{start}n{k} is token start * 10 + k.
    expected = [int(w.split("n")[0][1:]) * 10 + int(w.split("n")[1].rstrip(".")) for w in words]
    assert [t for s in segments for t in s.tokens] == expected
    for segment in segments:
        own = [w for w in words if int(w.split("n")[0][1:]) * 10 + int(w.split("n")[1].rstrip(".")) in segment.tokens]
        assert " ".join(own) == segment.text  # each token went to the segment that shows its word
        logprobs = [-(t % 10 + 1) / 10 for t in segment.tokens]
        assert segment.avg_logprob == pytest.approx(sum(logprobs) / len(logprobs))
        assert segment.temperature == pytest.approx(0.4)
    assert len(segments) > len(words) // 8  # cues are shorter than chunks: an output's tokens were shared out


def test_no_speech_prob_of_silence_is_one(base_url: str) -> None:
    silence = encode(np.zeros(3 * 16_000, np.float32))
    body = _post(base_url, {"response_format": "verbose_json", "prompt": "nothing said"}, silence).json()
    assert [s["no_speech_prob"] for s in body["segments"]] == [1.0]


def test_no_speech_probability_is_one_minus_the_mean_speech_probability() -> None:
    frames = [SpeechFrames(0.0, np.array([0.0, 1.0, 1.0, 0.5], np.float32))]  # 32 ms frames
    assert no_speech_probability(frames, 0.032, 0.096) == pytest.approx(0.0)
    assert no_speech_probability(frames, 0.0, 0.128) == pytest.approx(1 - 2.5 / 4)
    later = [SpeechFrames(10.0, np.array([0.2, 0.4], np.float32))]  # a chunk that starts at 10 s
    assert no_speech_probability(later, 10.0, 10.064) == pytest.approx(0.7)


# --- timestamp_granularities[] ------------------------------------------------------------------
def test_word_granularity_alone_gives_words_without_segments(client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1",
        file=("clip.wav", wav_bytes(2.0)),
        response_format="verbose_json",
        timestamp_granularities=["word"],
        prompt="two words",
    )
    result = strict(TranscriptionVerbose, raw.http_response.json())
    assert result.segments is None and [w.word for w in result.words or []] == ["two", "words"]
    both = client.audio.transcriptions.create(
        model="whisper-1",
        file=("clip.wav", wav_bytes(2.0)),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        prompt="two words",
    )
    assert both.words and both.segments


@pytest.mark.parametrize("response_format", ["json", "text", "srt"])
def test_granularities_need_verbose_json(client: openai.OpenAI, response_format: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(
            model="whisper-1",
            file=("clip.wav", wav_bytes()),
            response_format=response_format,
            timestamp_granularities=["segment"],
        )
    assert raised.value.body["param"] == "timestamp_granularities"


# --- include[]=logprobs, chunking_strategy -----------------------------------------------------
def test_include_logprobs_in_json(client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-transcribe", file=("clip.wav", wav_bytes()), include=["logprobs"], prompt="scored words here"
    )
    result = strict(Transcription, raw.http_response.json())
    assert result.logprobs and all(lp.logprob is not None and lp.logprob <= 0 for lp in result.logprobs)
    assert bytes(int(b) for lp in result.logprobs for b in lp.bytes or []).decode() == "scored words here"
    assert "".join(lp.token or "" for lp in result.logprobs) == "scored words here"
    plain = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", wav_bytes()))
    assert plain.logprobs is None  # only when asked for


@pytest.mark.parametrize("response_format", ["text", "verbose_json"])
def test_include_logprobs_needs_json(base_url: str, response_format: str) -> None:
    response = _post(base_url, {"include[]": "logprobs", "response_format": response_format})
    assert response.status_code == 400 and response.json()["error"]["param"] == "include"
    unknown = _post(base_url, {"include[]": "everything"})
    assert unknown.status_code == 400


@pytest.mark.parametrize(
    "strategy", ["auto", {"type": "server_vad"}, {"type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 300}]
)
def test_chunking_strategy_as_the_sdk_sends_it(client: openai.OpenAI, strategy: Any) -> None:
    result = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("clip.wav", wav_bytes()), chunking_strategy=strategy, prompt="chunked"
    )
    assert result.text == "chunked"


@pytest.mark.parametrize(
    "fields",
    [
        {"chunking_strategy": "manual"},
        {"chunking_strategy": '{"type": "fixed"}'},
        {"chunking_strategy": "[1, 2]"},
        {"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "3"},
        {"chunking_strategy[type]": "server_vad", "chunking_strategy[colour]": "red"},
    ],
)
def test_bad_chunking_strategy_is_400(base_url: str, fields: dict[str, str]) -> None:
    response = _post(base_url, fields)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "chunking_strategy"
    as_json = {"chunking_strategy": '{"type": "server_vad", "silence_duration_ms": 500}'}
    assert _post(base_url, as_json).status_code == 200


# --- the stream --------------------------------------------------------------------------------
def test_stream_events_validate_strictly(base_url: str) -> None:
    audio = encode(speechlike(70.0, seed=3))  # three 30 s pieces: several deltas
    for include in ([], ["logprobs"]):
        data: dict[str, Any] = {"stream": "true", "prompt": "streamed text", "include[]": include}
        events = sse_events(_post(base_url, data, audio).text)
        *deltas, done = events
        assert len(deltas) >= 2
        for event in deltas:
            delta = strict(TranscriptionTextDeltaEvent, event)
            assert (delta.logprobs is not None) == bool(include)
        final = strict(TranscriptionTextDoneEvent, done)
        assert final.text == "".join(e["delta"] for e in deltas)
        if include:
            assert done["logprobs"] == [lp for e in deltas for lp in e["logprobs"]]
            for event in deltas:  # each delta's tokens are its text (the joining space is no token)
                assert bytes(b for lp in event["logprobs"] for b in lp["bytes"]).decode() == event["delta"].strip()


def test_sdk_stream_with_logprobs(client: openai.OpenAI) -> None:
    stream = client.audio.transcriptions.create(
        model="gpt-4o-transcribe",
        file=("a.wav", wav_bytes(3.0)),
        prompt="live words",
        stream=True,
        include=["logprobs"],
    )
    events = list(stream)
    assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.done"]
    assert events[-1].text == "live words" and events[-1].logprobs and events[0].logprobs


# --- /v1/models ----------------------------------------------------------------------------------
def test_models_retrieve_the_served_model(client: openai.OpenAI, base_url: str) -> None:
    listed = client.models.list()
    assert [m.id for m in listed.data] == [SERVED]
    card = client.models.retrieve(SERVED)  # "/" in the id: the SDK percent-encodes it
    assert card.id == SERVED and card.object == "model"
    strict(Model, httpx.get(f"{base_url}/v1/models/{SERVED}").json())
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("whisper-1")
    assert raised.value.body["code"] == "model_not_found" and raised.value.body["param"] == "model"
    assert set(raised.value.response.json()["error"]) == {"message", "type", "code", "param"}


def test_usage_seconds_round_up(base_url: str) -> None:
    for seconds in (1.0, 1.01, 2.999):
        body = _post(base_url, {}, wav_bytes(seconds)).json()
        assert body["usage"] == {"type": "duration", "seconds": math.ceil(round(seconds, 3))}

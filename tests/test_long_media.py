"""Feature-length files on /v1/audio/transcriptions: piece by piece, exact across every piece boundary.

The recordings are tone words (tests/tone_words.py) with a long word across the end of every window the cutter
looks at; the engine reads the words back and a word cut by a piece's edge would read `~word`. So the text is
the script exactly only if every cut fell in a pause, and the subtitle times are the script's only if every
piece's offset was added back right.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import srt
from openai import OpenAI

from asr_server.config import Settings
from asr_server.server import create_app

from openai_strict import strict
from support import encode, running_server, speechlike
from tone_words import ToneWordEngine, render, script, write_flac

PIECE = 60.0  # ALIGN_CHUNK_SECONDS on CPU: the pieces' length
TOLERANCE = 0.015  # the engine reads words in 10 ms frames


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "asr_engine": "fake",
        "data_dir": tmp_path / "data",
        "device": "cpu",
        "align_chunk_seconds": PIECE,
        "long_audio_seconds": 120.0,
        "request_timeout": 600.0,
    }
    return Settings(**{**values, **overrides})


def _words(cues: list[srt.Subtitle]) -> list[str]:
    return [word for cue in cues for word in cue.content.split()]


@pytest.fixture(scope="module")
def four_hours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    seconds = 4 * 3600.0
    spoken = script(seconds, piece_seconds=PIECE, seed=4)
    path = write_flac(tmp_path_factory.mktemp("long") / "four-hours.flac", spoken, seconds)
    return path, spoken


def test_a_four_hour_file_gives_an_exact_srt(tmp_path: Path, four_hours: tuple[Path, list]) -> None:
    """240 pieces through a queue of 4: the file is one request; every word is there once, at its time."""
    path, spoken = four_hours
    app = create_app(_settings(tmp_path, queue_max=4), engine=ToneWordEngine())
    with running_server(app) as url, path.open("rb") as media:
        response = httpx.post(
            f"{url}/transcribe",
            files={"file": (path.name, media, "audio/flac")},
            data={"response_format": "srt", "subtitle_mode": "accurate"},
            timeout=900,
        )
    assert response.status_code == 200, response.text
    assert response.headers["X-Subtitle-Mode"] == "accurate"
    cues = list(srt.parse(response.text))
    assert _words(cues) == [s.word for s in spoken]
    assert not any(word.startswith("~") for word in _words(cues))  # no word was cut in two
    # Each cue starts with its first word and ends with its last: exact to the engine's 10 ms frames.
    position = 0
    for cue in cues:
        count = len(cue.content.split())
        first, last = spoken[position], spoken[position + count - 1]
        assert abs(cue.start.total_seconds() - first.start) <= TOLERANCE, cue
        assert cue.end.total_seconds() >= last.end - TOLERANCE, cue
        position += count
    assert cues[-1].start.total_seconds() > 4 * 3600 - 60


def test_words_and_segments_of_a_long_file(tmp_path: Path) -> None:
    """verbose_json through the openai SDK (strict): every word with its exact time, segments covering them."""
    seconds = 1500.0
    spoken = script(seconds, piece_seconds=PIECE, seed=2)
    path = write_flac(tmp_path / "talk.flac", spoken, seconds)
    app = create_app(_settings(tmp_path), engine=ToneWordEngine())
    with running_server(app) as url, path.open("rb") as media:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=600)
        raw = client.audio.transcriptions.with_raw_response.create(
            model="qwen3-asr",
            file=(path.name, media, "audio/flac"),
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            extra_body={"subtitle_mode": "accurate"},
        )
    from openai.types.audio import TranscriptionVerbose

    body = strict(TranscriptionVerbose, raw.http_response.json())
    assert body.duration == pytest.approx(seconds, abs=0.01)
    assert [w.word for w in body.words] == [s.word for s in spoken]
    for word, said in zip(body.words, spoken, strict=True):
        assert abs(word.start - said.start) <= TOLERANCE and abs(word.end - said.end) <= TOLERANCE
    assert " ".join(seg.text for seg in body.segments).split() == [s.word for s in spoken]


def test_a_long_file_streams_its_text_piece_by_piece(tmp_path: Path) -> None:
    seconds = 600.0
    spoken = script(seconds, piece_seconds=PIECE, seed=3)
    path = write_flac(tmp_path / "a.flac", spoken, seconds)
    app = create_app(_settings(tmp_path), engine=ToneWordEngine())
    deltas, done = [], None
    with (
        running_server(app) as url,
        path.open("rb") as media,
        httpx.stream(
            "POST",
            f"{url}/v1/audio/transcriptions",
            files={"file": (path.name, media, "audio/flac")},
            data={"response_format": "json", "stream": "true"},
            timeout=300,
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "transcript.text.delta":
                    deltas.append(event["delta"])
                elif event["type"] == "transcript.text.done":
                    done = event["text"]
    assert len(deltas) >= seconds / PIECE  # one per piece
    assert "".join(deltas) == done
    assert done.split() == [s.word for s in spoken]


def test_other_requests_go_first_while_a_long_file_runs(tmp_path: Path) -> None:
    """A 30-minute file (30 pieces, a few in flight) and a short upload sent while it runs: the short one is
    answered long before the file, because the file never holds more than its pieces in flight."""
    seconds = 1800.0
    spoken = script(seconds, piece_seconds=PIECE, seed=5)
    path = write_flac(tmp_path / "long.flac", spoken, seconds)
    app = create_app(_settings(tmp_path, max_batch_size=2), engine=ToneWordEngine(delay=0.1))
    finished: dict[str, float] = {}
    with running_server(app) as url:

        def long_request() -> None:
            with path.open("rb") as media:
                response = httpx.post(
                    f"{url}/v1/audio/transcriptions",
                    files={"file": (path.name, media)},
                    data={"response_format": "text"},
                    timeout=600,
                )
            assert response.status_code == 200
            assert response.text.split() == [s.word for s in spoken]
            finished["long"] = time.monotonic()

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(1.0)
        said = script(5.0, piece_seconds=PIECE, seed=9)
        response = httpx.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("short.wav", encode(render(said, 5.0)))},
            data={"response_format": "json"},
            timeout=60,
        )
        finished["short"] = time.monotonic()
        assert response.status_code == 200 and response.json()["text"].split() == [s.word for s in said]
        thread.join(timeout=600)
    assert finished["short"] < finished["long"] - 0.5


def test_speakers_on_a_long_file_get_a_clear_413(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, long_audio_seconds=10.0))
    with running_server(app) as url:
        response = httpx.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("a.wav", encode(speechlike(20, seed=1)))},
            data={"response_format": "diarized_json"},
            timeout=60,
        )
        assert response.status_code in (413, 503), response.text  # 503 where the diarization extra is missing
        if response.status_code == 413:
            error = response.json()["error"]
            assert error["code"] == "audio_too_long" and "LONG_AUDIO_SECONDS" in error["message"]
        # and the server keeps serving
        ok = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", encode(speechlike(20, seed=1)))})
        assert ok.status_code == 200


def test_longer_than_max_audio_seconds_is_413(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, max_audio_seconds=100.0, long_audio_seconds=30.0))
    with running_server(app) as url:
        response = httpx.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("a.flac", encode(speechlike(130, seed=1), fmt="FLAC"))},
            data={"response_format": "srt"},
            timeout=60,
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "audio_too_long"


def test_the_default_limits_take_feature_length_media() -> None:
    settings = Settings()
    assert settings.max_audio_seconds >= 4 * 3600
    assert settings.max_upload_bytes >= 4 * 3600 * 16_000 * 2  # four hours of 16-bit 16 kHz WAV fits

"""Long media through the real engine code: the hello checkpoint (every piece reads "hello world") and the real
forced aligner, on the piece-by-piece path (audio past LONG_AUDIO_SECONDS) and as a job. Each piece's words carry
the piece's own offset, and no piece is lost or repeated."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import srt

from asr_server.config import Settings
from asr_server.media.vad import split_at_quiet_points
from asr_server.server import create_app

from support import encode, running_server, speechlike

pytestmark = pytest.mark.slow
SECONDS = 300.0


@pytest.fixture(scope="module")
def talk() -> tuple[bytes, list[tuple[int, int]]]:
    audio = np.concatenate([speechlike(SECONDS / 2, seed=4), speechlike(SECONDS / 2, seed=5)])
    return encode(audio, fmt="FLAC"), split_at_quiet_points(audio, 16_000, 60.0)


@pytest.fixture(scope="module")
def url(hello_asr_dir: Path, tiny_aligner_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(
        asr_engine="transformers",
        model_id=str(hello_asr_dir),
        forced_aligner_id=str(tiny_aligner_dir),
        device="cpu",
        max_new_tokens=12,
        log_level="WARNING",
        long_audio_seconds=60.0,
        align_chunk_seconds=60.0,
        data_dir=tmp_path_factory.mktemp("data"),
    )
    with running_server(create_app(settings)) as base:
        yield base


def _check_words(words: list[dict], pieces: list[tuple[int, int]]) -> None:
    assert [w["word"] for w in words] == ["hello", "world"] * len(pieces)
    for index, (start, end) in enumerate(pieces):  # the tiny aligner times words in a piece's first 0.48 s
        for word in words[2 * index : 2 * index + 2]:
            assert start / 16_000 - 0.01 <= word["start"] <= word["end"] <= end / 16_000 + 0.01, (index, word)


def test_a_long_file_piece_by_piece(url: str, talk: tuple[bytes, list]) -> None:
    data, pieces = talk
    response = httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("talk.flac", data)},
        data={"response_format": "verbose_json", "timestamp_granularities[]": "word"},
        timeout=600,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["subtitle_mode"] == "accurate" and body["timing_fallback_chunks"] == []
    assert body["text"] == " ".join(["hello world"] * len(pieces))
    _check_words(body["words"], pieces)


def test_a_long_file_as_a_job(url: str, talk: tuple[bytes, list]) -> None:
    data, pieces = talk
    job = httpx.post(f"{url}/v1/jobs", files={"file": ("talk.flac", data)}, data={"response_format": "srt"}).json()
    deadline = time.monotonic() + 600
    while (state := httpx.get(f"{url}/v1/jobs/{job['id']}").json())["status"] != "succeeded":
        assert state["status"] in ("queued", "running") and time.monotonic() < deadline, state
        time.sleep(0.5)
    cues = list(srt.parse(httpx.get(f"{url}/v1/jobs/{job['id']}/result").text))
    assert " ".join(cue.content for cue in cues).split() == ["hello", "world"] * len(pieces)
    verbose = httpx.get(f"{url}/v1/jobs/{job['id']}/result", params={"format": "verbose_json"}).json()
    _check_words(verbose["words"], pieces)

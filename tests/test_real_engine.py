"""The real qwen-asr inference code (transformers engine) on tiny local checkpoints, through HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import srt
from openai.types.audio import Transcription, TranscriptionVerbose

from asr_server.config import Settings
from asr_server.server import create_app

from openai_strict import strict
from support import encode, noise, running_server, speechlike, tone

pytestmark = pytest.mark.slow


def _settings(model_dir: Path, **overrides: object) -> Settings:
    defaults: dict[str, object] = {
        "asr_engine": "transformers",
        "model_id": str(model_dir),
        "forced_aligner_id": "",
        "device": "cpu",
        "max_new_tokens": 12,
        "log_level": "WARNING",
        "batch_wait_ms": 50,
    }
    return Settings(**{**defaults, **overrides})


@pytest.fixture(scope="module")
def hello_url(hello_asr_dir: Path) -> Iterator[str]:
    with running_server(create_app(_settings(hello_asr_dir, preload=True))) as url:
        yield url


def test_exact_transcript_through_the_openai_sdk(hello_url: str) -> None:
    client = openai.OpenAI(base_url=f"{hello_url}/v1", api_key="x", max_retries=0)
    result = client.audio.transcriptions.create(model="qwen3-asr", file=("a.wav", encode(noise(3.0, seed=1))))
    assert result.text == "hello world"
    assert result.model_dump()["language"] == "english"
    text = client.audio.transcriptions.create(
        model="qwen3-asr", file=("a.flac", encode(tone(5.0), fmt="FLAC")), response_format="text", language="en"
    )
    assert text.strip() == "hello world"
    verbose = client.audio.transcriptions.create(
        model="qwen3-asr", file=("a.wav", encode(noise(7.0, seed=2))), response_format="verbose_json"
    )
    assert verbose.text == "hello world" and verbose.language == "english"
    assert verbose.duration == pytest.approx(7.0)
    assert verbose.segments and verbose.segments[-1].end <= 7.0


def test_tokens_and_scores_are_the_models_own(hello_url: str, hello_asr_dir: Path) -> None:
    """verbose_json segments and include[]=logprobs carry the generated text tokens (no language prefix, no
    special tokens) and their log-probabilities, strictly in the SDK's shapes."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hello_asr_dir)
    client = openai.OpenAI(base_url=f"{hello_url}/v1", api_key="x", max_retries=0)
    for language in (None, "en"):  # the model names the language, or the prompt forces it
        extra = {"language": language} if language else {}
        raw = client.audio.transcriptions.with_raw_response.create(
            model="qwen3-asr", file=("a.wav", encode(noise(4.0, seed=5))), response_format="verbose_json", **extra
        )
        verbose = strict(TranscriptionVerbose, raw.http_response.json())
        tokens = [t for segment in verbose.segments or [] for t in segment.tokens]
        assert tokenizer.decode(tokens) == "hello world"
        for segment in verbose.segments or []:
            assert tokenizer.decode(segment.tokens).strip() == segment.text
            assert -20.0 < segment.avg_logprob <= 0.0  # a mean natural-log probability
        scored = client.audio.transcriptions.with_raw_response.create(
            model="qwen3-asr", file=("a.wav", encode(noise(4.0, seed=5))), include=["logprobs"], **extra
        )
        logprobs = strict(Transcription, scored.http_response.json()).logprobs or []
        assert bytes(int(b) for lp in logprobs for b in lp.bytes or []).decode() == "hello world"
        assert len(logprobs) == len(tokens) and all(lp.logprob is not None and lp.logprob <= 0 for lp in logprobs)


def test_concurrent_requests_are_batched_and_all_correct(hello_url: str) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=hello_url, timeout=120) as http:
            return await asyncio.gather(
                *(
                    http.post("/transcribe", files={"file": ("a.wav", encode(noise(1.0 + i, seed=i)))})
                    for i in range(6)
                )
            )

    responses = asyncio.run(burst())
    assert [r.json()["text"] for r in responses] == ["hello world"] * 6
    ready = httpx.get(f"{hello_url}/ready").json()
    assert ready["state"] == "ready" and ready["engine"] == "transformers" and ready["device"] == "cpu"


def test_random_checkpoint_runs_the_real_path_with_forced_language(tiny_asr_dir: Path) -> None:
    with running_server(create_app(_settings(tiny_asr_dir))) as url:
        for language in ("zh", "en", None):
            data = {"language": language} if language else {}
            response = httpx.post(
                f"{url}/transcribe", files={"file": ("a.wav", encode(noise(2.0, seed=3)))}, data=data, timeout=120
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert isinstance(body["text"], str)
            if language == "zh":
                assert body["language"] == "chinese"


def test_unloadable_model_is_503_with_reason_and_health_stays_up(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with running_server(create_app(_settings(missing))) as url:
        response = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", encode(noise(1.0)))}, timeout=120)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "engine_unavailable" and str(missing) in error["message"]
        assert httpx.get(f"{url}/health").status_code == 200
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and str(missing) in ready.json()["error"]["message"]
        # a bad upload is still a 4xx, not a 503
        assert httpx.post(f"{url}/transcribe", files={"file": ("a.wav", b"")}).status_code == 400


def test_preload_failure_shows_on_ready(tmp_path: Path) -> None:
    with running_server(create_app(_settings(tmp_path / "missing", preload=True))) as url:
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"


# --- accurate subtitles: the real forced aligner ----------------------------------------------
@pytest.fixture(scope="module")
def aligned_url(hello_asr_dir: Path, tiny_aligner_dir: Path) -> Iterator[str]:
    settings = _settings(hello_asr_dir, forced_aligner_id=str(tiny_aligner_dir), max_audio_seconds=600)
    with running_server(create_app(settings)) as url:
        yield url


def test_accurate_srt_with_the_real_aligner(aligned_url: str) -> None:
    response = httpx.post(
        f"{aligned_url}/transcribe",
        files={"file": ("a.wav", encode(speechlike(8.0, seed=1)))},
        data={"response_format": "srt"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-subtitle-mode"] == "accurate"
    assert "x-subtitle-fallback-chunks" not in response.headers
    subs = list(srt.parse(response.text))
    assert " ".join(s.content for s in subs) == "hello world"
    assert all(0 <= s.start.total_seconds() < s.end.total_seconds() <= 8.0 for s in subs)


def test_long_audio_is_aligned_per_chunk_with_offsets(aligned_url: str) -> None:
    """200 s in pieces of at most 60 s (ALIGN_CHUNK_SECONDS' default on CPU), each transcribed and aligned on
    its own: the words of each piece carry its offset."""
    seconds = 200.0
    audio = np.concatenate([speechlike(seconds / 2, seed=2), speechlike(seconds / 2, seed=3)])
    client = openai.OpenAI(base_url=f"{aligned_url}/v1", api_key="x", max_retries=0)
    result = client.audio.transcriptions.create(
        model="qwen3-asr",
        file=("long.flac", encode(audio, fmt="FLAC")),
        response_format="verbose_json",
        timestamp_granularities=["word"],
        timeout=600,
    )
    extra = result.model_dump()
    assert extra["subtitle_mode"] == "accurate" and extra["timing_fallback_chunks"] == []
    words = result.words or []
    pieces = len(words) // 2  # the checkpoint says "hello world" for every piece
    assert pieces in (4, 5), result.text  # cut at a quiet point in the last 20% of each 60 s: 48-60 s long
    assert result.text == " ".join(["hello world"] * pieces)
    assert [w.word for w in words] == ["hello", "world"] * pieces
    for k in range(pieces):  # piece k starts within 48k..60k s and ends by its start + 60 s
        assert 48.0 * k <= words[2 * k].start <= words[2 * k + 1].end <= 60.0 * (k + 1)
    assert all(0 <= w.start <= w.end <= seconds for w in words)


def test_aligner_failure_falls_back_to_fast_per_chunk(hello_asr_dir: Path, tmp_path: Path) -> None:
    settings = _settings(hello_asr_dir, forced_aligner_id=str(tmp_path / "no-aligner"))
    with running_server(create_app(settings)) as url:
        response = httpx.post(
            f"{url}/transcribe",
            files={"file": ("a.wav", encode(speechlike(6.0, seed=4)))},
            data={"response_format": "vtt"},
            timeout=300,
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-subtitle-mode"] == "accurate"
    assert response.headers["x-subtitle-fallback-chunks"] == "0"
    assert "hello world" in response.text

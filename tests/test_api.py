"""The HTTP layer through a real server: the official openai SDK and httpx, with the fake engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from asr_server.config import Settings
from asr_server.engines import AlignedUnit, AlignItem
from asr_server.server import create_app

from support import GatedEngine, encode, noise, running_server, tone, wav_bytes


def _settings(**overrides: object) -> Settings:
    defaults: dict[str, object] = {"asr_engine": "fake", "max_upload_mb": 1.0, "max_audio_seconds": 30.0}
    return Settings(**{**defaults, **overrides})


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(create_app(_settings())) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) >= {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    return body["error"]


# --- the openai SDK, unchanged -----------------------------------------------------------------
def test_sdk_json(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", wav_bytes(2.0)), prompt="hello from the sdk", language="en"
    )
    assert result.text == "hello from the sdk"
    extra = result.model_dump()
    assert extra["language"] == "english" and extra["duration"] == pytest.approx(2.0)


def test_sdk_text(client: openai.OpenAI) -> None:
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", wav_bytes()), response_format="text", prompt="plain words"
    )
    assert isinstance(text, str) and text.strip() == "plain words"


def test_sdk_verbose_json(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", wav_bytes(3.0)), response_format="verbose_json", language="zh"
    )
    assert result.language == "chinese"
    assert result.duration == pytest.approx(3.0)
    assert result.text and result.segments and result.segments[0].text == result.text
    assert result.segments[0].end == pytest.approx(3.0)


def test_sdk_error_is_raised_with_openai_envelope(client: openai.OpenAI) -> None:
    # 400, as OpenAI answers: the SDK raises BadRequestError (a 422 would be UnprocessableEntityError).
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", wav_bytes()), language="klingon")
    assert raised.value.body["param"] == "language"
    assert "en (English)" in raised.value.body["message"]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("clip.flac", encode(tone(1.5), 16_000, "FLAC")),
        ("clip.ogg", encode(tone(1.5, 48_000), 48_000, "OGG", "VORBIS")),
        ("clip.wav", encode(noise(1.5, 8_000), 8_000, "WAV", "PCM_16")),
        ("stereo.wav", encode(tone(1.5, 44_100)[:, None].repeat(2, axis=1), 44_100)),
        ("clip.mp3", encode(tone(1.5, 44_100), 44_100, "MP3")),
    ],
)
def test_formats_decode_to_the_right_duration(base_url: str, name: str, data: bytes) -> None:
    response = httpx.post(f"{base_url}/transcribe", files={"file": (name, data)}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(1.5, abs=0.06)


# --- every bad input gets its 4xx, and the server keeps serving ------------------------------
BAD_REQUESTS = [
    ("empty file", {"file": ("a.wav", b"")}, {}, 400, "empty_file"),
    ("undecodable", {"file": ("a.wav", b"RIFF\x00\x00garbage" * 10)}, {}, 400, "invalid_audio"),
    ("unsupported format", {"file": ("doc.pdf", b"%PDF-1.4 not audio")}, {}, 415, "unsupported_format"),
    ("no audio stream", {"file": ("a.txt", b"just some text")}, {}, 415, "unsupported_format"),
    ("missing file", {}, {"language": "en"}, 400, "missing_field"),
    ("bad language", {"file": ("a.wav", wav_bytes())}, {"language": "xx"}, 400, "invalid_value"),
    ("bad format", {"file": ("a.wav", wav_bytes())}, {"response_format": "docx"}, 400, "invalid_value"),
    ("bad temperature", {"file": ("a.wav", wav_bytes())}, {"temperature": "hot"}, 400, "invalid_value"),
    ("temperature range", {"file": ("a.wav", wav_bytes())}, {"temperature": "1.5"}, 400, "invalid_value"),
    ("bad granularity", {"file": ("a.wav", wav_bytes())}, {"timestamp_granularities[]": "frame"}, 400, None),
    ("prompt too long", {"file": ("a.wav", wav_bytes())}, {"prompt": "x" * 10_001}, 400, "invalid_value"),
    ("too long", {"file": ("a.wav", encode(noise(31.0, 8_000, 0.01), 8_000, "FLAC"))}, {}, 413, "audio_too_long"),
    ("too large", {"file": ("a.wav", b"\x00" * (1024 * 1024 + 70_000))}, {}, 413, "too_large"),
]


@pytest.mark.parametrize(("case", "files", "data", "status", "code"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_clear_4xx(
    base_url: str, case: str, files: dict, data: dict, status: int, code: str | None
) -> None:
    response = httpx.post(f"{base_url}/v1/audio/transcriptions", files=files or None, data=data, timeout=30)
    assert response.status_code == status, response.text
    error = _error(response)
    if code:
        assert error["code"] == code
    assert error["message"]
    # and the server keeps serving
    ok = httpx.post(f"{base_url}/transcribe", files={"file": ("a.wav", wav_bytes())}, timeout=30)
    assert ok.status_code == 200


def test_chunked_upload_over_the_limit_is_413(base_url: str) -> None:
    def body() -> Iterator[bytes]:
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(40):
            yield b"\x00" * 65_536

    response = httpx.post(
        f"{base_url}/transcribe",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
        timeout=30,
    )
    assert response.status_code == 413
    assert _error(response)["code"] == "too_large"


def test_unknown_route_and_method_use_the_envelope(base_url: str) -> None:
    assert _error(httpx.get(f"{base_url}/nowhere"))["code"] == "not_found"
    assert _error(httpx.get(f"{base_url}/transcribe"))["code"] == "method_not_allowed"


# --- operations routes -------------------------------------------------------------------------
def test_health_ready_models_and_request_id(base_url: str) -> None:
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{base_url}/ready")
    assert ready.status_code == 200 and ready.json()["engine"] == "fake"
    models = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x").models.list()
    assert [m.id for m in models.data] == ["Qwen/Qwen3-ASR-0.6B"]
    response = httpx.get(f"{base_url}/health", headers={"X-Request-ID": "trace-me-42"})
    assert response.headers["x-request-id"] == "trace-me-42"
    assert len(httpx.get(f"{base_url}/health").headers["x-request-id"]) >= 8


async def test_full_queue_answers_429_with_retry_after() -> None:
    """A slow engine, a queue of 2: the burst beyond what fits is refused, the rest succeed."""
    engine = GatedEngine()
    app = create_app(_settings(queue_max=2, max_batch_size=1, warmup=False), engine=engine)
    with running_server(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:

            async def upload() -> httpx.Response:
                return await http.post("/transcribe", files={"file": ("a.wav", wav_bytes(0.5))})

            tasks = [asyncio.create_task(upload()) for _ in range(6)]
            await asyncio.sleep(1.0)
            engine.gate.set()
            responses = await asyncio.gather(*tasks)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(429) >= 1 and statuses.count(200) >= 2
    assert set(statuses) <= {200, 429}
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert _error(refused)["code"] == "queue_full"


def test_client_disconnect_cancels_queued_work() -> None:
    """A client that gives up while its job waits: the job is dropped, never run."""
    import threading

    engine = GatedEngine()
    app = create_app(_settings(max_batch_size=1, warmup=False), engine=engine)
    with running_server(app) as url:
        blocker = threading.Thread(
            target=lambda: httpx.post(
                f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(0.5))}, data={"prompt": "first"}, timeout=30
            )
        )
        blocker.start()
        import time

        time.sleep(0.3)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{url}/transcribe",
                files={"file": ("a.wav", wav_bytes(0.5))},
                data={"prompt": "abandoned"},
                timeout=0.5,
            )
        time.sleep(0.3)
        engine.gate.set()
        blocker.join()
        after = httpx.post(
            f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(0.5))}, data={"prompt": "after"}, timeout=30
        )
        assert after.json()["text"] == "after"
    assert engine.contexts == ["first", "after"]


def test_openapi_schema_is_served(base_url: str) -> None:
    schema = httpx.get(f"{base_url}/openapi.json").json()
    assert "/v1/audio/transcriptions" in schema["paths"]


def test_the_served_model_is_resolved_once_not_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no MODEL_ID the default follows free GPU memory; once serving, /v1/models must keep naming the model
    that was chosen, even when an engine (vLLM) has since claimed the memory the choice was made on."""
    from asr_server.engines import hardware

    free_bytes = [40 * 1024**3]  # the hardware, as nvidia-smi would report it
    monkeypatch.setattr(hardware, "free_gpu_bytes", lambda: free_bytes[0])
    app = create_app(Settings(asr_engine="fake", model_id="", log_level="WARNING"))
    with running_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        before = [m.id for m in client.models.list().data]
        free_bytes[0] = 0  # the engine took the memory
        after = [m.id for m in client.models.list().data]
        card = client.models.retrieve("Qwen/Qwen3-ASR-1.7B")
    assert before == after == ["Qwen/Qwen3-ASR-1.7B"]
    assert card.id == "Qwen/Qwen3-ASR-1.7B"


class LateAlignerEngine(GatedEngine):
    """Like an engine hosted elsewhere (gateway mode, Ray): whether it can align is known once it has loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.set()

    @property
    def supports_alignment(self) -> bool:
        return self.loaded

    def align(self, items: list[AlignItem]) -> list[list[AlignedUnit]]:
        out = []
        for item in items:
            words = item.text.split()
            step = len(item.audio) / 16_000 / max(1, len(words))
            out.append([AlignedUnit(text=w, start=i * step, end=(i + 1) * step) for i, w in enumerate(words)])
        return out


def test_accurate_subtitles_follow_what_the_engine_learns_when_it_loads() -> None:
    app = create_app(Settings(asr_engine="fake", log_level="WARNING", preload=False), engine=LateAlignerEngine())
    with running_server(app) as url:
        form = {"response_format": "srt", "prompt": "Hello there. General Kenobi."}
        first = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(3.0))}, data=form, timeout=30)
        assert first.headers["x-subtitle-mode"] == "fast"  # not loaded yet: no aligner known
        accurate = httpx.post(
            f"{url}/transcribe",
            files={"file": ("a.wav", wav_bytes(3.0))},
            data={**form, "subtitle_mode": "accurate"},
            timeout=30,
        )
        default = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(3.0))}, data=form, timeout=30)
    assert accurate.status_code == 200, accurate.text
    assert accurate.headers["x-subtitle-mode"] == "accurate"
    assert default.headers["x-subtitle-mode"] == "accurate"


def test_the_subtitle_forms_share_one_cue_layout_definition() -> None:
    """/transcribe, /v1/audio/transcriptions and /translate take the same cue-layout fields, with the same limits
    and descriptions (one model, not fields declared per route)."""
    from asr_server.api.uploads import CueLayout

    schemas = create_app(Settings(asr_engine="fake")).openapi()["components"]["schemas"]
    forms = [s for name, s in schemas.items() if name.startswith(("Body_transcribe", "Body_translate_translate"))]
    assert len(forms) == 3
    for field in CueLayout.model_fields:
        declared = [form["properties"][field] for form in forms]
        assert all(d == declared[0] for d in declared), field
        assert declared[0]["description"] == CueLayout.model_fields[field].description


def test_openapi_shows_the_real_response_schemas(base_url: str) -> None:
    schema = httpx.get(f"{base_url}/openapi.json").json()
    components = schema["components"]["schemas"]
    for path, models in {
        "/v1/audio/transcriptions": {"TranscriptionJSON", "TranscriptionVerboseJSON", "TranscriptionDiarizedJSON"},
        "/translate": {"TranslationJSON", "TranslationVerboseJSON"},
    }.items():
        responses = schema["paths"][path]["post"]["responses"]
        refs = {
            ref["$ref"].rsplit("/", 1)[-1] for ref in responses["200"]["content"]["application/json"]["schema"]["anyOf"]
        }
        assert refs == models
        assert {"text/plain", "application/x-subrip", "text/vtt"} <= set(responses["200"]["content"])
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
    segment = components["TranscriptionSegment"]
    assert set(segment["required"]) >= {"seek", "tokens", "avg_logprob", "compression_ratio", "no_speech_prob"}
    verbose = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(2.0))},
        data={"response_format": "verbose_json", "prompt": "Hello there."},
    ).json()
    assert set(verbose) <= set(components["TranscriptionVerboseJSON"]["properties"])
    assert set(components["TranscriptionVerboseJSON"]["required"]) <= set(verbose)

"""Operations: API keys (HTTP and WebSocket), CORS, and Prometheus metrics, through a real server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import openai
import pytest
import websockets

from asr_server.config import Settings
from asr_server.server import create_app

from support import GatedEngine, running_server, wav_bytes

KEY = "sk-test-0123456789"


def _app(**overrides: object):  # type: ignore[no-untyped-def]
    return create_app(Settings(asr_engine="fake", log_level="WARNING", **overrides))


def test_api_keys_guard_http(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# operators\nsk-from-file\n\n")
    with running_server(_app(api_keys=f"{KEY}, other-key", api_keys_file=str(key_file))) as url:
        upload = {"file": ("a.wav", wav_bytes(0.5))}
        refused = httpx.post(f"{url}/transcribe", files=upload)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer wrong"}
        assert httpx.post(f"{url}/transcribe", files=upload, headers=wrong).status_code == 401
        assert httpx.post(f"{url}/transcribe", files=upload, headers={"Authorization": f"Bearer {KEY}"}).is_success
        assert httpx.post(f"{url}/transcribe", files=upload, headers={"X-API-Key": "sk-from-file"}).is_success
        # the openai SDK sends its api_key as a bearer token
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert client.audio.transcriptions.create(model="m", file=("a.wav", wav_bytes(0.5)), prompt="ok").text == "ok"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="bad", max_retries=0).models.list()
        # open and closed operations routes
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/ready").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"X-API-Key": KEY}).status_code == 200


def test_metrics_and_ready_can_be_opened_or_closed() -> None:
    with running_server(_app(api_keys=KEY, metrics_public=True, ready_public=False)) as url:
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"{url}/ready").status_code == 401


def test_keys_never_reach_the_log(capfd: pytest.CaptureFixture[str]) -> None:
    secret = "sk-do-not-log-me-42"
    with running_server(create_app(Settings(asr_engine="fake", log_level="DEBUG", api_keys=secret))) as url:
        httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
        httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-wrong-guess"})
    out, err = capfd.readouterr()
    assert secret not in out + err and "sk-wrong-guess" not in out + err


async def test_websocket_is_checked_before_accept() -> None:
    with running_server(_app(api_keys=KEY)) as url:
        ws_url = url.replace("http", "ws") + "/ws/transcribe"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url):
                pass
        assert refused.value.response.status_code == 401
        async with websockets.connect(f"{ws_url}?api_key={KEY}") as ws:
            assert '"ready"' in await asyncio.wait_for(ws.recv(), 10)
        async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            assert '"ready"' in await asyncio.wait_for(ws.recv(), 10)


def test_per_key_concurrency_is_bounded() -> None:
    engine = GatedEngine()
    app = create_app(
        Settings(asr_engine="fake", log_level="WARNING", api_keys=KEY, max_concurrent_per_key=1, warmup=False),
        engine=engine,
    )
    with running_server(app) as url:
        headers = {"X-API-Key": KEY}
        first = threading.Thread(
            target=lambda: httpx.post(f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(0.5))}, headers=headers)
        )
        first.start()
        import time

        time.sleep(0.3)
        second = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(0.5))}, headers=headers)
        engine.gate.set()
        first.join()
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "too_many_concurrent_requests"
        after = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(0.5))}, headers=headers)
        assert after.status_code == 200


def test_cors_off_by_default_and_on_when_configured() -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    with running_server(_app()) as url:
        response = httpx.options(f"{url}/transcribe", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    with running_server(_app(cors_origins="https://app.example.com")) as url:
        response = httpx.options(f"{url}/transcribe", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            rest = line[len(name) :]
            if rest[:1] in (" ", "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def test_prometheus_metrics_follow_the_traffic() -> None:
    with running_server(_app(batch_wait_ms=0)) as url:
        for _ in range(3):
            assert httpx.post(f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(2.0))}).status_code == 200
        assert httpx.post(f"{url}/transcribe", files={"file": ("a.wav", b"")}).status_code == 400
        text = httpx.get(f"{url}/metrics").text
    assert _metric(text, "asr_http_requests_total", route="/transcribe", status="200") == 3
    assert _metric(text, "asr_http_requests_total", route="/transcribe", status="400") == 1
    assert _metric(text, "asr_batch_size_count", kind="transcribe") >= 1
    assert _metric(text, "asr_audio_seconds_total") == pytest.approx(6.0)
    assert _metric(text, "asr_queue_wait_seconds_count", kind="transcribe") == 3
    assert _metric(text, "asr_model_loaded") == 1
    assert _metric(text, "asr_queue_depth") == 0
    assert _metric(text, "asr_streams_active") == 0
    assert _metric(text, "asr_real_time_factor_count") >= 1


@pytest.mark.slow
def test_speculative_decoding_metrics_are_exported(tiny_asr_dir: Path) -> None:
    """The same checkpoint as target and draft: every proposed token is accepted, and /metrics says so."""
    settings = Settings(
        asr_engine="transformers",
        model_id=str(tiny_asr_dir),
        fast_model_id=str(tiny_asr_dir),
        use_speculative=True,
        forced_aligner_id="",
        device="cpu",
        max_new_tokens=8,
        log_level="WARNING",
    )
    with running_server(create_app(settings)) as url:
        assert httpx.post(f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(2.0))}, timeout=120).is_success
        text = httpx.get(f"{url}/metrics").text
    assert _metric(text, "asr_speculative_acceptance_rate") == pytest.approx(1.0)
    assert _metric(text, "asr_speculative_tokens_per_target_pass") > 1.0

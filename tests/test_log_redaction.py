"""API keys never reach a log line: the real CLI server, the key sent every way, all its output searched."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest
import websockets.sync.client

from asr_server.logger import REDACTED, redactor

from server_process import serve_cli
from support import wav_bytes

KEY = "k1-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
LLM_KEY = "sk-llm-0123456789abcdef"


def _websocket(url: str, **kwargs: object) -> None:
    with contextlib.suppress(Exception), websockets.sync.client.connect(url, open_timeout=10, **kwargs) as ws:
        ws.close()


def test_no_log_line_carries_a_key(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    output = tmp_path / "stdout-stderr.txt"
    env = {
        "API_KEYS": f"{KEY},other-key-1234",
        "OPENAI_API_KEY": LLM_KEY,
        "LOG_LEVEL": "DEBUG",
        "LOG_FILE": str(log_file),
    }
    with serve_cli(env, output=output) as server:
        url, ws_url = server.url, server.url.replace("http://", "ws://")
        with httpx.Client(base_url=url, timeout=30) as http:
            upload = {"file": ("a.wav", wav_bytes(0.5))}
            assert http.post("/transcribe", files=upload, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
            assert http.post("/transcribe", files=upload, headers={"X-API-Key": KEY}).status_code == 200
            http.post(f"/transcribe?api_key={KEY}", files=upload)
            http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}-wrong"})
            http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": KEY})
            http.get(f"/no-such-path/{KEY}", headers={"X-API-Key": KEY})
        _websocket(f"{ws_url}/ws/transcribe?api_key={KEY}")
        _websocket(f"{ws_url}/ws/transcribe?language=en&api_key={KEY}-wrong")
        _websocket(
            f"{ws_url}/v1/realtime?intent=transcription", subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]
        )
        _websocket(f"{ws_url}/ws/transcribe", additional_headers={"Authorization": f"Bearer {KEY}"})
    text = output.read_text(errors="replace") + log_file.read_text(errors="replace")
    assert "WebSocket /ws/transcribe" in text  # uvicorn's connection lines were logged...
    assert f"api_key={REDACTED}" in text  # ...with the key taken out
    assert KEY not in text and KEY[3:] not in text
    assert LLM_KEY not in text


@pytest.mark.parametrize(
    "line",
    [
        f'127.0.0.1:5 - "WebSocket /ws/transcribe?api_key={KEY}" [accepted]',
        f"headers: [(b'authorization', b'Bearer {KEY}'), (b'x-api-key', b'{KEY}')]",
        f"X-API-Key: {KEY}",
        f"subprotocols ['realtime', 'openai-insecure-api-key.{KEY}']",
        f"request id {KEY} failed",
    ],
)
def test_every_way_a_key_travels_is_redacted(line: str) -> None:
    assert KEY not in redactor([KEY])(line)
    assert KEY not in redactor()(line) or line.startswith("request id")  # a bare value needs it configured

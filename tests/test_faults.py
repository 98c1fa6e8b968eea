"""Faults around the server: a full disk under the log file must not take the service down."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from asr_server.config import Settings
from asr_server.server import create_app

from support import running_server, wav_bytes


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_disk_full_for_the_log_file_keeps_serving(capfd: pytest.CaptureFixture[str]) -> None:
    app = create_app(Settings(asr_engine="fake", log_level="INFO", log_file=Path("/dev/full")))
    with running_server(app) as url:
        for _ in range(5):
            response = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", wav_bytes(0.5))}, data={"prompt": "ok"})
            assert response.json()["text"] == "ok"
        assert httpx.get(f"{url}/health").status_code == 200
    _, err = capfd.readouterr()
    assert "No space left on device" in err or "ENOSPC" in err or "Errno 28" in err  # reported, not fatal


def test_unwritable_log_directory_falls_back_to_stderr(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    app = create_app(Settings(asr_engine="fake", log_level="INFO", log_file=blocker / "server.log"))
    with running_server(app) as url:
        assert httpx.get(f"{url}/health").status_code == 200

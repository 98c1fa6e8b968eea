"""The official openai npm package (tests/node, pinned in its package-lock.json) against a real server.

`make install` runs `npm ci --prefix tests/node` where npm exists; without node or those modules this
test is skipped, saying which is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from asr_server.config import Settings
from asr_server.server import create_app

from llm_stub import LLMStub
from support import running_server, wav_bytes

NODE_PROJECT = Path(__file__).resolve().parent / "node"
CHECKS = [
    "json", "text", "srt", "vtt", "verbose_json", "verbose_json_words", "include_logprobs",
    "chunking_strategy", "stream", "bad_request", "translations", "models",
]  # fmt: skip


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_PROJECT / "node_modules" / "openai" / "package.json").is_file():
        pytest.skip("the npm openai package is not installed: run `npm ci --prefix tests/node`")
    return node


def test_the_node_sdk_accepts_every_response(tmp_path: Path) -> None:
    node = _node()
    audio = tmp_path / "clip.wav"
    audio.write_bytes(wav_bytes(2.0))
    llm = LLMStub().start()
    settings = Settings(
        asr_engine="fake", model_id="Qwen/Qwen3-ASR-0.6B", log_level="WARNING", openai_base_url=llm.base_url,
        translate_model="correct",
    )  # fmt: skip
    try:
        with running_server(create_app(settings)) as url:
            proc = subprocess.run(
                [node, str(NODE_PROJECT / "transcribe.mjs"), url, str(audio)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
    finally:
        llm.stop()
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failures = [r for r in results if not r["ok"]]
    assert not failures, "\n".join(r["error"] for r in failures) + proc.stderr[-2000:]
    assert [r["check"] for r in results] == CHECKS
    assert proc.returncode == 0, proc.stderr[-2000:]

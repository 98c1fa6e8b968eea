"""Idle RSS of a started server before its first request, against a bare FastAPI+uvicorn process.

    .venv/bin/python bench/idle_rss.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time

import httpx
from common import rss_mb

BARE_APP = textwrap.dedent(
    """
    import sys, uvicorn
    from fastapi import FastAPI
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


def _measure(cmd: list[str], port: int, env: dict[str, str]) -> float:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        time.sleep(1.0)  # let start-up settle
        return rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(BARE_APP)
    bare = _measure([sys.executable, script.name, "8931"], 8931, env)
    server_env = {**env, "ASR_ENGINE": "transformers", "MODEL_ID": "Qwen/Qwen3-ASR-0.6B", "PRELOAD": "false"}
    served = _measure(
        [sys.executable, "-m", "asr_server.cli", "serve", "--port", "8932", "--host", "127.0.0.1"], 8932, server_env
    )
    print(f"bare FastAPI+uvicorn: {bare:.1f} MB")
    print(f"asr-server idle (transformers engine, not loaded): {served:.1f} MB")
    print(f"difference: {served - bare:+.1f} MB (target: within 30 MB)")


if __name__ == "__main__":
    main()

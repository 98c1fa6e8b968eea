"""The real `asr-server serve` in a child process, for tests that need its limits, its output and its memory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from support import free_port

BIN = Path(sys.executable).parent


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    port: int

    def status_kib(self, field: str) -> int:
        """A /proc/PID/status field in KiB: VmRSS (resident now) or VmHWM (peak resident)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise KeyError(field)


@contextlib.contextmanager
def serve_cli(
    env: dict[str, str], preexec_fn: Callable[[], None] | None = None, output: Path | None = None
) -> Iterator[ServerProcess]:
    """Start `asr-server serve` on a free loopback port (fake engine unless `env` says otherwise), wait for
    /health, yield it; terminate it at the end. stdout and stderr go to `output` (or are discarded)."""
    port = free_port()
    sink = output.open("wb") if output is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [str(BIN / "asr-server"), "serve", "--port", str(port), "--host", "127.0.0.1"],
        env={**os.environ, "ASR_ENGINE": "fake", "LOG_LEVEL": "WARNING", **env},
        stdout=sink,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec_fn,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"asr-server exited with {process.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("asr-server did not become healthy")
            time.sleep(0.1)
        yield ServerProcess(process, url, port)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if output is not None:
            sink.close()  # type: ignore[union-attr]

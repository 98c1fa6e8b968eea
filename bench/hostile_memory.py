"""Peak and after-request resident memory of the CLI server for each hostile upload of issue 13.

Each bomb runs against a fresh `asr-server serve` (fake engine, default limits) so VmHWM is that bomb's peak; a
last run sends them all to one server, as a peer repeating them would. Also: an endless header, 1,100 idle
connections with the soft descriptor limit at 1,024.

    .venv/bin/python bench/hostile_memory.py                        # this tree
    .venv/bin/python bench/hostile_memory.py --pythonpath /tmp/old  # another tree's src, as asr_server/
    .venv/bin/python bench/hostile_memory.py --skip "8 ch"          # leave a bomb out (the old 8 ch one needs 9 GB)
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hostile_media import pyav_encode, silent_soundfile  # noqa: E402
from server_process import ServerProcess, serve_cli  # noqa: E402


def _wide_wav() -> bytes:
    """1024 channels of 8-bit samples, 99 MB: 6 s of audio at 16 kHz."""
    import io

    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", 16_000, 1024, format="WAV", subtype="PCM_U8") as sound:
        block = np.zeros((16_000, 1024), np.float32)
        for _ in range(6):
            sound.write(block)
    return buffer.getvalue()


BOMBS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "FLAC 2 ch 192 kHz 1190 s silence": ("a.flac", lambda: silent_soundfile(1190, 192_000, 2)),
    "FLAC 8 ch 192 kHz 1190 s silence": ("b.flac", lambda: silent_soundfile(1190, 192_000, 8)),
    "Matroska/FLAC 2 ch 384 kHz 1300 s, no length": (
        "c.mkv",
        lambda: pyav_encode(1300, 384_000, container="matroska", codec="flac", channels=2, silent=True, seekable=False),
    ),
    "WAV 1024 ch 8-bit 99 MB": ("d.wav", _wide_wav),
}


def _mb(kib: int) -> float:
    return round(kib / 1024, 1)


def _post(server: ServerProcess, name: str, data: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    response = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": (name, data)}, timeout=600)
    return response.status_code, round(time.perf_counter() - started, 2)


def _one_bomb(env: dict[str, str], filename: str, data: bytes) -> dict[str, object]:
    with serve_cli(env) as server:
        idle = server.status_kib("VmRSS")
        status, seconds = _post(server, filename, data)
        time.sleep(1.0)
        return {
            "bytes": len(data),
            "status": status,
            "seconds": seconds,
            "idle_mb": _mb(idle),
            "peak_mb": _mb(server.status_kib("VmHWM")),
            "after_mb": _mb(server.status_kib("VmRSS")),
        }


def _endless_header(server: ServerProcess, limit: int = 100 * 1024 * 1024) -> dict[str, object]:
    before, sent = server.status_kib("VmRSS"), 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            while sent < limit:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
    return {
        "sent_mb": round(sent / 2**20, 1),
        "rss_before_mb": _mb(before),
        "rss_after_mb": _mb(server.status_kib("VmRSS")),
    }


def _idle_connections(server: ServerProcess, count: int = 1100) -> dict[str, object]:
    sockets, answered = [], True
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.5)
        try:
            answered = httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            answered = False
    finally:
        for sock in sockets:
            sock.close()
    return {"idle_connections": count, "health_answered": answered}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythonpath", help="a folder holding another asr_server package to measure")
    parser.add_argument("--skip", action="append", default=[], help="leave out bombs whose name contains this")
    args = parser.parse_args()
    env = {"PYTHONPATH": args.pythonpath} if args.pythonpath else {}
    results: dict[str, object] = {}
    chosen = {name: bomb for name, bomb in BOMBS.items() if not any(part in name for part in args.skip)}
    payloads = {name: (filename, build()) for name, (filename, build) in chosen.items()}
    for name, (filename, data) in payloads.items():
        results[name] = _one_bomb(env, filename, data)
        print(name, results[name], flush=True)
    with serve_cli(env) as server:
        idle = server.status_kib("VmRSS")
        statuses = [_post(server, filename, data)[0] for filename, data in payloads.values()]
        time.sleep(1.0)
        results["all bombs on one server"] = {
            "statuses": statuses,
            "idle_mb": _mb(idle),
            "peak_mb": _mb(server.status_kib("VmHWM")),
            "after_mb": _mb(server.status_kib("VmRSS")),
        }
        print(results["all bombs on one server"], flush=True)
        results["endless header"] = _endless_header(server)
        print(results["endless header"], flush=True)

    def soft_1024() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    with serve_cli(env, preexec_fn=soft_1024) as server:
        results["idle connections"] = _idle_connections(server)
        print(results["idle connections"], flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

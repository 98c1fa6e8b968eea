"""Gateway+queue overhead per request with the fake engine.

Measures, on loopback with one client: (a) POST /transcribe (validation, decode, queue, worker,
formatting) with the fake engine, (b) a bare FastAPI route that only reads the same multipart upload,
and (c) the queue+worker path alone in-process (no HTTP). Overhead = median(a) - median(b).

    .venv/bin/python bench/gateway_overhead.py [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time

import httpx
import numpy as np
import soundfile as sf
from fastapi import FastAPI, File, UploadFile

from asr_server.config import Settings
from asr_server.media.audio import DecodedAudio
from asr_server.server import create_app
from asr_server.testing import running_server


def _wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * 16_000), np.float32), 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _time_requests(url: str, path: str, payload: bytes, n: int) -> list[float]:
    timings = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n + 20):
            started = time.perf_counter()
            response = client.post(path, files={"file": ("a.wav", payload)})
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if i >= 20:  # warm-up
                timings.append(elapsed * 1000)
    return timings


async def _queue_only(n: int) -> list[float]:
    app = create_app(Settings(asr_engine="fake", log_level="WARNING", batch_wait_ms=0))
    services = app.state.services
    await services.worker.start()
    audio = DecodedAudio(samples=np.zeros(16_000, np.float32))
    timings = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            await services.transcription.transcribe(audio)
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        await services.worker.stop()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of the uploaded clip")
    args = parser.parse_args()
    payload = _wav(args.seconds)

    bare = FastAPI()

    @bare.post("/upload")
    async def upload(file: UploadFile = File(...)) -> dict[str, int]:
        return {"bytes": len(await file.read())}

    with running_server(bare) as url:
        bare_ms = _time_requests(url, "/upload", payload, args.requests)
    with running_server(create_app(Settings(asr_engine="fake", log_level="WARNING", batch_wait_ms=0))) as url:
        full_ms = _time_requests(url, "/transcribe", payload, args.requests)
    queue_ms = asyncio.run(_queue_only(args.requests))

    def p(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    print(f"clip {args.seconds:g} s WAV, {args.requests} sequential requests, loopback")
    print(f"bare FastAPI upload route: median {statistics.median(bare_ms):.2f} ms, p95 {p(bare_ms, 95):.2f} ms")
    print(f"/transcribe (fake engine): median {statistics.median(full_ms):.2f} ms, p95 {p(full_ms, 95):.2f} ms")
    print(f"queue+worker alone:        median {statistics.median(queue_ms):.3f} ms, p95 {p(queue_ms, 95):.3f} ms")
    overhead = statistics.median(full_ms) - statistics.median(bare_ms)
    print(f"gateway+queue overhead at the median: {overhead:.2f} ms (target <= 2 ms)")


if __name__ == "__main__":
    main()

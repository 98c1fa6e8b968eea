"""Service throughput at 1, 16 and 128 concurrent requests, for whichever engine the settings choose.

Starts the service in-process from the environment (e.g. `USE_VLLM=1 MODEL_ID=Qwen/Qwen3-ASR-1.7B`,
PRELOAD forced on), or measures a running one with `--url`. At each concurrency C it keeps C requests
in flight until `--requests` (at least C) have been answered, each a `--clip-seconds` clip, and reports
requests/s, audio seconds per wall second and latency percentiles. Run it once with USE_VLLM=1 and
once without on the same GPU to compare the vLLM path with the transformers path.

    USE_VLLM=1 MODEL_ID=... .venv/bin/python bench/vllm_throughput.py [--concurrency 1,16,128] [--clip-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import soundfile as sf

from asr_server.config import Settings
from asr_server.server import create_app
from asr_server.testing import running_server


def _wav(seconds: float, seed: int) -> bytes:
    samples = (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16_000))).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def _level(url: str, concurrency: int, total: int, clip: bytes) -> list[float]:
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as http:

        async def one() -> None:
            async with slots:
                started = time.perf_counter()
                response = await http.post("/transcribe", files={"file": ("a.wav", clip)})
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one() for _ in range(total)))
    return latencies


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    settings = Settings(preload=True, queue_max=4096, log_level="WARNING")
    with running_server(create_app(settings)) as local:
        print(f"engine: {httpx.get(f'{local}/ready', timeout=3600).json()}")
        yield local


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="measure a running server instead of starting one")
    parser.add_argument("--concurrency", default="1,16,128")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (at least the concurrency)")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    args = parser.parse_args()
    clip = _wav(args.clip_seconds, 0)
    with _server(args.url) as url:
        asyncio.run(_level(url, 1, 2, clip))  # warm-up
        print("| concurrent | requests | wall s | requests/s | audio s per s | p50 latency s | p95 latency s |")
        print("|---|---|---|---|---|---|---|")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            total = max(args.requests, concurrency)
            started = time.perf_counter()
            latencies = sorted(asyncio.run(_level(url, concurrency, total, clip)))
            wall = time.perf_counter() - started
            p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
            print(
                f"| {concurrency} | {total} | {wall:.1f} | {total / wall:.2f} | {total * args.clip_seconds / wall:.1f}"
                f" | {statistics.median(latencies):.2f} | {p95:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

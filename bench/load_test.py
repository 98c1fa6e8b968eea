"""Bounded load test on loopback: many concurrent uploads (and live streams) against a server process.

Starts `asr-server serve` as a subprocess (fake engine or a tiny real checkpoint, uvicorn or Granian),
sends `--requests` uploads with `--concurrency` in flight plus `--streams` concurrent WebSocket streams,
then reports latency percentiles, status counts (only 200 and the documented 429 are acceptable) and the
server's RSS before, during and after (growth = leak).

    .venv/bin/python bench/load_test.py --engine fake --server uvicorn --requests 2000 --concurrency 32
    .venv/bin/python bench/load_test.py --engine tiny --requests 300 --concurrency 16 --streams 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from common import bench_checkpoint, noise_clips, rss_mb, wav_bytes

from asr_server.testing import free_port

ROOT = Path(__file__).resolve().parents[1]


def _tiny_checkpoint() -> Path:
    return bench_checkpoint("qwen3-asr-hello", "--hello")


async def _uploads(url: str, n: int, concurrency: int) -> tuple[list[float], Counter[int]]:
    payloads = [wav_bytes(noise_clips(1, 1.0 + (i % 4), seed=i % 7)[0]) for i in range(8)]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def one(i: int) -> None:
            async with semaphore:
                started = time.perf_counter()
                response = await http.post("/transcribe", files={"file": ("a.wav", payloads[i % len(payloads)])})
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] += 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return latencies, statuses


async def _streams(url: str, count: int, seconds: float) -> Counter[str]:
    import websockets

    outcomes: Counter[str] = Counter()
    pcm = (np.clip(np.random.default_rng(0).standard_normal(int(seconds * 16_000)) * 0.1, -1, 1) * 32767).astype("<i2")

    async def one() -> None:
        try:
            async with websockets.connect(url.replace("http", "ws") + "/ws/transcribe", max_size=None) as ws:
                await ws.recv()  # ready
                for start in range(0, len(pcm), 3200):  # 200 ms frames, 4x faster than real time
                    await ws.send(pcm[start : start + 3200].tobytes())
                    await asyncio.sleep(0.05)
                await ws.send(json.dumps({"type": "stop"}))
                async for message in ws:
                    if isinstance(message, str) and json.loads(message).get("type") == "error":
                        outcomes["error_event"] += 1
            outcomes["completed"] += 1
        except Exception as exc:
            outcomes[type(exc).__name__] += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["fake", "tiny"], default="fake")
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--streams", type=int, default=0)
    parser.add_argument("--stream-seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="repeat the upload load to look for memory growth")
    args = parser.parse_args()

    port = free_port()
    env = {
        **os.environ,
        "LOG_LEVEL": "WARNING",
        "ASR_ENGINE": "fake" if args.engine == "fake" else "transformers",
        "USE_GRANIAN": "1" if args.server == "granian" else "0",
        "QUEUE_MAX": "256",
        "FORCED_ALIGNER_ID": "",
        "MAX_NEW_TOKENS": "12",
    }
    if args.engine == "tiny":
        env.update(MODEL_ID=str(_tiny_checkpoint()), PRELOAD="1", DEVICE="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "asr_server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.3)
        server_pid = proc.pid
        rss = [("start", rss_mb(server_pid))]
        for round_number in range(1, args.rounds + 1):

            async def round_() -> tuple[list[float], Counter[int], Counter[str]]:
                uploads = _uploads(url, args.requests, args.concurrency)
                if args.streams:
                    (lat, st), streams = await asyncio.gather(uploads, _streams(url, args.streams, args.stream_seconds))
                    return lat, st, streams
                lat, st = await uploads
                return lat, st, Counter()

            started = time.perf_counter()
            latencies, statuses, streams = asyncio.run(round_())
            wall = time.perf_counter() - started
            rss.append((f"after round {round_number}", rss_mb(server_pid)))
            ms = np.array(latencies) * 1000
            print(
                f"round {round_number}: {args.requests} uploads, {args.concurrency} in flight, {args.engine} engine, "
                f"{args.server}: {args.requests / wall:.0f} req/s, p50 {np.percentile(ms, 50):.1f} ms, "
                f"p95 {np.percentile(ms, 95):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, statuses {dict(statuses)}"
                + (f", streams {dict(streams)}" if args.streams else "")
            )
            unexpected = set(statuses) - {200, 429}
            if unexpected:
                print(f"UNEXPECTED STATUSES: {unexpected}")
        print("server RSS (MB): " + ", ".join(f"{label} {value:.0f}" for label, value in rss))
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()

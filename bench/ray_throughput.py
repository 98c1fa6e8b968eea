"""Ray mode throughput: 1 vs 2 CPU model replicas on the tiny random-weight checkpoint, over HTTP.

A local Ray cluster with `--cpus` logical CPUs; each replica reserves one and runs torch on one thread
(CPU_THREADS=1), so 2 replicas use 2 cores. The same concurrent uploads go to single-process mode
(the same settings, no Ray) for reference. Each configuration is measured `--rounds` times,
alternating, and the best round is kept (the machine is shared and noisy).

    .venv/bin/python bench/ray_throughput.py [--clips 64] [--clip-seconds 8] [--concurrency 16] [--rounds 2]

Random weights stop at arbitrary points, but the same clip always decodes the same way, so every
configuration does the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import bench_checkpoint, noise_clips, post_uploads, wav_bytes

from asr_server.config import Settings
from asr_server.server import create_app
from asr_server.testing import free_port, running_server

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint() -> Path:
    return bench_checkpoint("qwen3-asr-tiny-random")


async def _latency(url: str, wav: bytes, n: int) -> float:
    """Median seconds of one upload at a time."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            (await http.post("/transcribe", files={"file": ("a.wav", wav)})).raise_for_status()
            times.append(time.perf_counter() - started)
        return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--clip-seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=200, help="MAX_NEW_TOKENS")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray cluster")
    args = parser.parse_args()

    import ray
    from ray import serve

    from asr_server.engines.ray.engine import APP_NAME
    from asr_server.engines.ray.serve import build_application, resolve_settings

    base: dict[str, Any] = {
        "model_id": str(_checkpoint()),
        "forced_aligner_id": "",
        "device": "cpu",
        "dtype": "float32",
        "cpu_threads": 1,
        "max_new_tokens": args.tokens,
        "log_level": "WARNING",
        "request_timeout": 3600,
        "queue_max": max(64, args.concurrency * 2),
    }
    wavs = [wav_bytes(clip) for clip in noise_clips(args.clips, args.clip_seconds)]
    audio_seconds = args.clips * args.clip_seconds

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"

    def on_ray(replicas: int) -> tuple[float, str]:
        settings = Settings(**base, ray_min_replicas=replicas, ray_max_replicas=replicas, ray_cpus_per_replica=1)
        serve.run(build_application(resolve_settings(settings, ray.cluster_resources())), name=APP_NAME)
        asyncio.run(post_uploads(url, wavs[: args.concurrency], args.concurrency))  # warm every replica's path
        elapsed = asyncio.run(post_uploads(url, wavs, args.concurrency))
        served = httpx.get(f"{url}/ready", timeout=60).json()["ray_replicas"]
        split = " / ".join(str(counts["items"]) for counts in served.values())
        serve.delete(APP_NAME)
        return elapsed, split

    def single_process() -> tuple[float, str]:
        with running_server(create_app(Settings(**base, preload=True))) as single_url:
            asyncio.run(post_uploads(single_url, wavs[: args.concurrency], args.concurrency))
            return asyncio.run(post_uploads(single_url, wavs, args.concurrency)), "-"

    # What Ray's two hops (proxy -> gateway replica -> model replica) add to a request: the fake engine.
    fake = {"asr_engine": "fake", "warmup": False, "log_level": "WARNING"}
    with running_server(create_app(Settings(**fake))) as single_url:
        single_ms = 1000 * asyncio.run(_latency(single_url, wavs[0], 50))
    fake_settings = Settings(**fake, ray_min_replicas=1, ray_max_replicas=1, ray_cpus_per_replica=0)
    serve.run(build_application(resolve_settings(fake_settings, ray.cluster_resources())), name=APP_NAME)
    ray_ms = 1000 * asyncio.run(_latency(url, wavs[0], 50))
    serve.delete(APP_NAME)

    runs: dict[str, list[tuple[float, str]]] = {}
    for _ in range(args.rounds):
        for label, measure in (
            ("single process (no Ray), 1 thread", single_process),
            ("Ray, 1 CPU replica", lambda: on_ray(1)),
            ("Ray, 2 CPU replicas", lambda: on_ray(2)),
        ):
            runs.setdefault(label, []).append(measure())
    serve.shutdown()
    ray.shutdown()

    print(
        f"tiny checkpoint, fp32, CPU_THREADS=1 per model, {args.clips} x {args.clip_seconds:g} s clips, "
        f"{args.concurrency} concurrent, MAX_NEW_TOKENS={args.tokens}, best of {args.rounds}, {os.cpu_count()} cores"
    )
    print("| configuration | wall s | audio s per wall s | requests/s | jobs per replica (with warm-up) |")
    print("|---|---|---|---|---|")
    for label, results in runs.items():
        elapsed, split = min(results)
        print(f"| {label} | {elapsed:.2f} | {audio_seconds / elapsed:.1f} | {args.clips / elapsed:.1f} | {split} |")
    print(
        f"fake engine, one {args.clip_seconds:g} s upload at a time, median of 50: single process {single_ms:.1f} ms, "
        f"Ray {ray_ms:.1f} ms"
    )
    print("all rounds (wall s):", {label: [round(e, 2) for e, _ in results] for label, results in runs.items()})


if __name__ == "__main__":
    main()

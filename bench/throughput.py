"""Service throughput vs qwen-asr called directly, on a random-weight checkpoint of real 0.6B dimensions.

One process, one loaded model (paired comparison): qwen-asr's own `transcribe()` at batch 1 and at
batch B, then the service over HTTP at 1 and N concurrent requests with dynamic batching on
(MAX_BATCH_SIZE=B) and off (MAX_BATCH_SIZE=1). Generation is forced to exactly `--tokens` new tokens
(min_new_tokens = max_new_tokens), since random weights stop at arbitrary points.

    .venv/bin/python bench/throughput.py [--dims 0.6b] [--clip-seconds 10] [--tokens 40] [--batch 8] [--concurrency 16]

A tiny checkpoint can show the queue's overhead and that batching happens, not real speed: its
compute is too small for batching to matter. The 0.6b dims make compute per clip realistic for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
from common import bench_checkpoint, noise_clips, post_uploads, wav_bytes

from asr_server.config import Settings
from asr_server.engines.transformers_engine import TransformersEngine
from asr_server.server import create_app
from asr_server.testing import running_server

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(dims: str) -> Path:
    return bench_checkpoint(f"qwen3-asr-{dims}-random", "--dims", dims)


def _direct(engine: TransformersEngine, clips: list[np.ndarray], batch: int) -> float:
    """Audio seconds per wall second for qwen-asr's transcribe() in batches of `batch`."""
    model = engine._model  # the same Qwen3ASRModel instance the service uses
    model.max_inference_batch_size = batch
    started = time.perf_counter()
    for i in range(0, len(clips), batch):
        model.transcribe(audio=[(c, 16_000) for c in clips[i : i + batch]])
    return sum(len(c) for c in clips) / 16_000 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", default="0.6b", choices=["tiny", "0.6b", "1.7b"])
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    checkpoint = _checkpoint(args.dims)
    base = {
        "model_id": str(checkpoint),
        "forced_aligner_id": "",
        "device": "cpu",
        "dtype": "float32",
        "max_new_tokens": args.tokens,
        "warmup": False,
        "log_level": "WARNING",
        "request_timeout": 3600,
    }
    engine = TransformersEngine(Settings(**base, max_batch_size=args.batch))

    def ensure_loaded() -> None:
        # The server unloads its engine at shutdown; reload between runs, outside the timings.
        if not engine.loaded:
            engine.load()
            engine._model.model.thinker.generation_config.min_new_tokens = args.tokens  # fixed-length decoding
            engine._model.transcribe(audio=[(noise_clips(1, 2.0)[0], 16_000)])  # warm-up

    ensure_loaded()

    few = noise_clips(4, args.clip_seconds)
    many = noise_clips(args.concurrency, args.clip_seconds)

    def direct(batch: int, clips: list[np.ndarray]) -> float:
        ensure_loaded()
        return _direct(engine, clips, batch)

    def service(batch_size: int, concurrency: int, clips: list[np.ndarray]) -> float:
        ensure_loaded()
        app = create_app(Settings(**base, max_batch_size=batch_size), engine=engine)
        with running_server(app) as url:
            elapsed = asyncio.run(post_uploads(url, [wav_bytes(c) for c in clips], concurrency))
        return sum(len(c) for c in clips) / 16_000 / elapsed

    # Each service figure is taken right after its direct counterpart (paired), over `--rounds` rounds, and
    # the best round is kept: on a shared, noisy machine the best is the least disturbed.
    runs: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for label, measure in (
            ("direct transcribe(), batch 1", lambda: direct(1, few)),
            ("service, 1 request at a time", lambda: service(args.batch, 1, few)),
            (f"direct transcribe(), batch {args.batch}", lambda: direct(args.batch, many)),
            (f"service, {args.concurrency} concurrent, batching on (max {args.batch})",
             lambda: service(args.batch, args.concurrency, many)),
            (f"service, {args.concurrency} concurrent, batching off", lambda: service(1, args.concurrency, many)),
        ):
            runs.setdefault(label, []).append(measure())
    rows = [(label, max(values)) for label, values in runs.items()]

    print(f"dims {args.dims}, fp32, {args.clip_seconds:g} s clips, {args.tokens} tokens each")
    print("| run | audio s per wall s | RTF |")
    print("|---|---|---|")
    for label, speed in rows:
        print(f"| {label} | {speed:.2f} | {1 / speed:.2f} |")
    print(f"service batched / direct batched: {rows[3][1] / rows[2][1]:.0%} (target >= 90%)")
    print(f"service 1-at-a-time / direct batch 1: {rows[1][1] / rows[0][1]:.0%}")


if __name__ == "__main__":
    main()

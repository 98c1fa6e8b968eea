"""What the benchmarks share: random-weight checkpoints, noise clips as WAV uploads, concurrent uploads, and
the resident set (now and its peak).

Checkpoints are built once by scripts/make_tiny_checkpoint.py (no model hub needed) and cached under
.cache/bench/.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16_000


def bench_checkpoint(name: str, *script_args: str) -> Path:
    """The cached checkpoint `name`, built with `script_args` (e.g. `--dims 0.6b`, `--hello`) if missing."""
    target = ROOT / ".cache" / "bench" / name
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        script = ROOT / "scripts" / "make_tiny_checkpoint.py"
        subprocess.run([sys.executable, str(script), str(target), *script_args], check=True)
    return target


def noise_clips(n: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """`n` clips of white noise at 16 kHz (random-weight models need no speech), from one seeded generator."""
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32) for _ in range(n)]


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz PCM-16 WAV: what a client uploads."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def post_uploads(url: str, payloads: list[bytes], concurrency: int) -> float:
    """Wall seconds to POST every WAV to /transcribe, `concurrency` at a time; every one must succeed."""
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=3600) as http:

        async def one(data: bytes) -> None:
            async with semaphore:
                (await http.post("/transcribe", files={"file": ("a.wav", data)})).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(p) for p in payloads))
        return time.perf_counter() - started


def rss_mb(pid: int | str = "self") -> float:
    """Resident set of a process (this one by default) in MB, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def peak_rss() -> Iterator[list[float]]:
    """Samples this process's resident set every millisecond while the block runs; yields [peak MB]."""
    peak = [rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()

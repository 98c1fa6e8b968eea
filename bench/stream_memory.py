"""Does a live stream leave anything behind? Rounds of concurrent /ws/transcribe streams against an in-process
server (fake engine, real VAD), with Python's traced heap and the resident set after each round.

    .venv/bin/python bench/stream_memory.py [--rounds 6] [--streams 4] [--seconds 20]

The traced heap counts live Python objects only; RSS also holds what the allocator keeps mapped.
`malloc_trim` hands freed heap pages back, so "RSS trimmed" staying flat while "RSS" moves means the
allocator, not a leak. The biggest allocation sites that grew are printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import tracemalloc

from common import rss_mb
from load_test import _streams

from asr_server.config import Settings
from asr_server.server import create_app
from asr_server.testing import running_server


def _trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    app = create_app(Settings(asr_engine="fake", log_level="WARNING"))
    with running_server(app) as url:
        asyncio.run(_streams(url, args.streams, args.seconds))  # warm-up: the VAD model, first-use caches
        gc.collect()
        _trim()
        print(f"after a warm-up round: RSS {rss_mb():.0f} MB")
        tracemalloc.start(25)
        baseline = tracemalloc.take_snapshot()
        print("| round | streams | RSS | RSS trimmed | traced heap growth |\n|---|---|---|---|---|")
        for round_ in range(1, args.rounds + 1):
            outcomes = asyncio.run(_streams(url, args.streams, args.seconds))
            gc.collect()
            rss = rss_mb()
            _trim()
            traced = tracemalloc.get_traced_memory()[0] / 2**20
            print(f"| {round_} | {dict(outcomes)} | {rss:.0f} MB | {rss_mb():.0f} MB | {traced:.2f} MB |", flush=True)
        grown = tracemalloc.take_snapshot().compare_to(baseline, "traceback")[:3]
    print("largest growth by allocation site:")
    for stat in grown:
        print(f"  {stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks at {stat.traceback[-1]}")


if __name__ == "__main__":
    main()

"""Memory after /v1/realtime sessions with `turn_detection: null`: each session commits many buffers of speech
without waiting for their transcripts (a client that sends faster than the model decodes), against an
in-process server (fake engine, the configured VAD); RSS and the traced Python heap after each session.

    .venv/bin/python bench/realtime_memory.py [--sessions 3] [--turns 100] [--seconds 10] [--vad silero]

The traced heap counts live Python objects only; "RSS trimmed" is after `malloc_trim`, which hands freed
heap pages back: RSS that stays up while the trimmed figure comes down is the allocator, not a leak.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import tracemalloc

import numpy as np
from common import peak_rss, rss_mb

from asr_server.config import Settings
from asr_server.media.audio_sink import release_free_memory
from asr_server.server import create_app
from asr_server.testing import commit_realtime_turns, running_server

RATE = 24_000  # the Realtime API's PCM16 rate


def _appends(seconds: float) -> list[str]:
    """One turn: a tone between short silences, as 1 s appends."""
    t = np.arange(int((seconds - 0.4) * RATE)) / RATE
    speech = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    audio = np.concatenate([np.zeros(int(0.2 * RATE)), speech, np.zeros(int(0.2 * RATE))])
    pcm = (audio * 32767).astype("<i2").tobytes()
    step = RATE * 2
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    return [json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(c).decode()}) for c in chunks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--vad", choices=("silero", "energy"), default="silero")
    args = parser.parse_args()
    appends = _appends(args.seconds)
    app = create_app(Settings(asr_engine="fake", stream_vad=args.vad, log_level="WARNING"))
    with running_server(app) as base:
        url = base.replace("http", "ws")
        asyncio.run(commit_realtime_turns(url, 2, appends))  # warm-up: the VAD model, first-use caches
        gc.collect()
        release_free_memory()
        print(f"after a warm-up session: RSS {rss_mb():.0f} MB")
        tracemalloc.start()
        print("| session | turns | peak RSS | RSS after | RSS trimmed | traced heap after |\n|---|---|---|---|---|---|")
        for number in range(1, args.sessions + 1):
            with peak_rss() as peak:
                done = asyncio.run(commit_realtime_turns(url, args.turns, appends)).total()
            gc.collect()
            rss = rss_mb()
            release_free_memory()
            traced = tracemalloc.get_traced_memory()[0] / 2**20
            row = f"| {number} | {done} | {peak[0]:.0f} MB | {rss:.0f} MB | {rss_mb():.0f} MB | {traced:.2f} MB |"
            print(row, flush=True)


if __name__ == "__main__":
    main()

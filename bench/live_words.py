"""What words and speakers cost a live final: one real-time stream through /ws/transcribe, once per mode.

The same espeak-ng conversation (two voices taking turns, real pauses) is streamed in real time, 100 ms frames,
once with each `word_timing` (none, fast, accurate) and once with `diarize=true`, on one server with the forced
aligner and the diarizer loaded. Per utterance (paired across runs by segment id):

- final latency: the final's arrival minus the moment the audio up to its `end` was sent;
- added delay: that latency minus the same utterance's with `word_timing: none` (p50 / p95);
- with accurate timing, the `words` event's arrival after its final: the delay a final would add if it waited
  for the aligner (reported as "accurate inline"), which is why the aligner's words come in their own event.

    .venv/bin/python bench/live_words.py [--aligner-dims tiny|0.6b] [--seconds 45] [--model DIR] [--aligner DIR]
        [--runs none,fast,accurate,speakers] [--quantize int8] [--max-new-tokens 32] [--cpu-threads N]

Defaults: the tests' tiny "hello world" ASR checkpoint (a decode costs little, so the figures are the words'
and speakers' own cost) and a random-weight forced aligner of the chosen dimensions (compute does not depend on
the weights), both built on first use by scripts/make_tiny_checkpoint.py and cached in .cache/bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_checkpoint

from asr_server.config import Settings
from asr_server.media.audio import resample
from asr_server.server import create_app
from asr_server.testing import running_server

RATE = 16_000
FRAME_S = 0.1
VOICES = (["-v", "en-us+m3", "-p", "30", "-s", "160"], ["-v", "en-gb+f4", "-p", "80", "-s", "150"])
SENTENCES = (
    "The meeting will start again in five minutes.",
    "Please remember to bring the quarterly report with you.",
    "We measured the latency of every final result during the test.",
    "Could you repeat the last number once more, slowly?",
    "Turn left at the second traffic light and continue straight ahead.",
    "The library closes at eight o'clock on weekdays.",
    "Thank you all for coming.",
    "A good caption system never falls behind the conversation.",
)


def speak(text: str, voice: list[str]) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", *voice, "--stdout", text], check=True, capture_output=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    samples = resample(samples, rate, RATE)
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return (0.5 * samples[loud[0] : loud[-1] + 1] / float(np.max(np.abs(samples)))).astype(np.float32)


def conversation(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [np.zeros(RATE // 2, np.float32)]
    total, turn = 0.5, 0
    while total < seconds:
        clip = speak(SENTENCES[turn % len(SENTENCES)], VOICES[turn % 2])
        pause = np.zeros(int(rng.uniform(0.8, 1.5) * RATE), np.float32)
        parts += [clip, pause]
        total += (clip.size + pause.size) / RATE
        turn += 1
    return np.concatenate(parts)


async def stream(url: str, audio: np.ndarray, start: dict[str, Any]) -> dict[str, Any]:
    """Stream in real time; per segment: final latency, words-event lag, speaker."""
    import websockets

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    frame = int(FRAME_S * RATE)
    sent: list[float] = []
    finals: dict[int, dict[str, Any]] = {}
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "start", "language": "en", **start}))
        began = time.monotonic()

        async def send() -> None:
            for k, offset in enumerate(range(0, pcm.size, frame)):
                await asyncio.sleep(max(0.0, began + k * FRAME_S - time.monotonic()))
                await ws.send(pcm[offset : offset + frame].tobytes())
                sent.append(time.monotonic())
            await ws.send(json.dumps({"type": "stop"}))

        sender = asyncio.create_task(send())
        async for message in ws:
            event, now = json.loads(message), time.monotonic()
            if event["type"] == "final":
                index = min(max(int(np.ceil(event["end"] / FRAME_S)) - 1, 0), len(sent) - 1)
                finals[event["segment_id"]] = {"latency": now - sent[index], "at": now, "speaker": event.get("speaker")}
            elif event["type"] == "words":
                finals[event["segment_id"]]["words_lag"] = now - finals[event["segment_id"]]["at"]
            elif event["type"] == "error":
                raise RuntimeError(f"error event: {event}")
        await sender
    return finals


def p(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def row(name: str, latencies: list[float], added: list[float]) -> str:
    return (
        f"| {name} | {p(latencies, 0.5):.3f} / {p(latencies, 0.95):.3f} | "
        f"{p(added, 0.5) * 1000:+.0f} / {p(added, 0.95) * 1000:+.0f} ms |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aligner-dims", choices=["tiny", "0.6b"], default="tiny")
    parser.add_argument("--model", help="Qwen3-ASR checkpoint directory (default: the tiny hello one)")
    parser.add_argument("--aligner", help="Qwen3-ForcedAligner checkpoint directory (default: random weights)")
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--runs", default="none,fast,accurate,speakers", help="which runs, comma-separated")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    parser.add_argument("--cpu-threads", type=int, default=0, help="CPU_THREADS (the engine's and the diarizer's)")
    args = parser.parse_args()
    model = args.model or str(bench_checkpoint("qwen3-asr-hello", "--hello"))
    aligner = args.aligner or str(
        bench_checkpoint(f"qwen3-forced-aligner-{args.aligner_dims}-random", "--aligner", "--dims", args.aligner_dims)
    )
    settings = Settings(
        model_id=model,
        forced_aligner_id=aligner,
        max_new_tokens=args.max_new_tokens,
        quantize=args.quantize,
        cpu_threads=args.cpu_threads,
        preload=True,
        warmup=True,
        stream_partial_budget=0,  # partials would only add noise to the finals' latency
        speaker_match_threshold=0.82,  # two espeak-ng voices are closer than two people (tests/test_ws_words.py)
        log_level="WARNING",
    )
    audio = conversation(args.seconds)
    every = {
        "none": ("none", "/ws/transcribe", {"word_timing": "none"}),
        "fast": ("fast", "/ws/transcribe", {"word_timing": "fast"}),
        "accurate": ("accurate", "/ws/transcribe", {"word_timing": "accurate"}),
        "speakers": ("speakers (fast words)", "/ws/transcribe?diarize=true", {"word_timing": "fast"}),
    }
    runs = [every[name] for name in ["none", *(n for n in args.runs.split(",") if n != "none")]]
    app = create_app(settings)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    with running_server(app) as base:
        url = base.replace("http", "ws")
        warm = audio[: int(6 * RATE)]
        for _, path, start in runs:  # loads the aligner and the diarizer before anything is measured
            asyncio.run(stream(url + path, warm, start))
        for name, path, start in runs:
            results[name] = asyncio.run(stream(url + path, audio, start))
            print(f"{name}: {len(results[name])} finals", flush=True)
    base_run = results["none"]
    lines = ["| run | final latency p50 / p95 (s) | added vs none, p50 / p95 |", "|---|---|---|"]
    for name, finals in results.items():
        paired = [k for k in finals if k in base_run]
        lines.append(
            row(
                name,
                [finals[k]["latency"] for k in paired],
                [finals[k]["latency"] - base_run[k]["latency"] for k in paired],
            )
        )
        if name == "accurate":
            lags = [finals[k].get("words_lag", float("nan")) for k in paired]
            inline = [finals[k]["latency"] + lag for k, lag in zip(paired, lags, strict=True)]
            lines.append(
                row(
                    "accurate inline (final waits for the aligner)",
                    inline,
                    [x - base_run[k]["latency"] for k, x in zip(paired, inline, strict=True)],
                )
            )
            lines.append(f"| `words` event after its final | {p(lags, 0.5):.3f} / {p(lags, 0.95):.3f} | |")
    speakers = results.get("speakers (fast words)", {})
    labels = [speakers[k]["speaker"] for k in sorted(speakers)]
    print(f"\n{len(audio) / RATE:.0f} s stream, aligner {args.aligner_dims}, {len(base_run)} utterances")
    print("\n".join(lines))
    if labels:
        print(f"speaker labels in order: {''.join(label or '-' for label in labels)} (turns alternate two voices)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Stream a WAV file to /ws/transcribe at real-time pace (or faster), print partials and finals, and
report latencies. Usage::

    python scripts/stream_file.py speech.wav [--url ws://127.0.0.1:8000/ws/transcribe] [--speed 1]
        [--language en] [--prompt "names, terms"] [--frame-ms 100] [--api-key KEY] [--quiet]

Latency of a result = its arrival time minus the time the audio it covers (its `end`) was sent.
Importable: `stream_samples()` streams an array and returns every event with its arrival time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SAMPLE_RATES = (8000, 16000, 24000, 48000)


@dataclass
class StreamResult:
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (arrival, event)
    send_times: list[float] = field(default_factory=list)  # when each frame was sent
    frame_seconds: float = 0.1
    started: float = 0.0
    finished: float = 0.0
    close_code: int | None = None
    close_reason: str = ""

    def sent_at(self, audio_time: float) -> float:
        """When the audio up to `audio_time` (seconds into the stream) had been sent."""
        index = min(max(math.ceil(audio_time / self.frame_seconds) - 1, 0), len(self.send_times) - 1)
        return self.send_times[index]

    def latencies(self, kind: str) -> list[float]:
        return [at - self.sent_at(event["end"]) for at, event in self.events if event["type"] == kind]

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [event for _, event in self.events if event["type"] == "final"]


async def stream_samples(
    url: str,
    samples: np.ndarray,
    sample_rate: int,
    *,
    speed: float = 1.0,
    frame_ms: float = 100.0,
    language: str | None = None,
    prompt: str | None = None,
    api_key: str | None = None,
    on_event: Callable[[float, dict[str, Any]], None] | None = None,
) -> StreamResult:
    """Send mono float samples (at one of SAMPLE_RATES) as paced PCM16 frames, then `stop`; collect events."""
    import websockets

    frame = max(1, int(sample_rate * frame_ms / 1000))
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    result = StreamResult(frame_seconds=frame / sample_rate)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"expected a ready event, got {ready}")
        start = {"type": "start", "language": language, "prompt": prompt, "sample_rate": sample_rate}
        await ws.send(json.dumps(start))
        result.started = time.monotonic()

        async def send() -> None:
            for k, offset in enumerate(range(0, len(pcm), frame)):
                # An absolute schedule: pacing does not drift with the time each send takes.
                delay = result.started + k * result.frame_seconds / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(pcm[offset : offset + frame].tobytes())
                result.send_times.append(time.monotonic())
            await ws.send(json.dumps({"type": "stop"}))

        sender = asyncio.create_task(send())
        try:
            async for message in ws:
                event = json.loads(message)
                arrived = time.monotonic()
                result.events.append((arrived, event))
                if on_event is not None:
                    on_event(arrived - result.started, event)
        except websockets.ConnectionClosed:
            pass
        finally:
            sender.cancel()
        result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
    result.finished = time.monotonic()
    return result


def load_wav(path: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples at a rate the server accepts (other rates are resampled to 16 kHz)."""
    import soundfile as sf

    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate not in SAMPLE_RATES:
        import soxr

        mono, rate = soxr.resample(mono, rate, 16000).astype(np.float32), 16000
    return mono, rate


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wav")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws/transcribe")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 4 = four times faster")
    parser.add_argument("--language")
    parser.add_argument("--prompt")
    parser.add_argument("--frame-ms", type=float, default=100.0)
    parser.add_argument("--api-key")
    parser.add_argument("--quiet", action="store_true", help="print only the report")
    args = parser.parse_args(argv)
    samples, rate = load_wav(args.wav)

    tty = sys.stdout.isatty()
    clear = "\r\033[K" if tty else ""  # on a terminal the partial line is rewritten in place

    def show(at: float, event: dict[str, Any]) -> None:
        if args.quiet:
            return
        if event["type"] == "partial":
            print(f"{clear}{at:7.2f}  … {event['text'][-100:]}", end="" if tty else "\n", flush=True)
        elif event["type"] == "final":
            print(f"{clear}{at:7.2f}  [{event['start']:7.2f}-{event['end']:7.2f}] {event['text']}", flush=True)
        elif event["type"] == "error":
            print(f"{clear}{at:7.2f}  error {event['code']}: {event['message']}", file=sys.stderr, flush=True)

    result = asyncio.run(
        stream_samples(
            args.url,
            samples,
            rate,
            speed=args.speed,
            frame_ms=args.frame_ms,
            language=args.language,
            prompt=args.prompt,
            api_key=args.api_key,
            on_event=show,
        )
    )
    duration = len(samples) / rate
    finals, partials = result.latencies("final"), result.latencies("partial")
    print(f"\naudio {duration:.1f} s streamed in {result.finished - result.started:.1f} s (speed {args.speed:g})")
    print(f"closed with {result.close_code} {result.close_reason}".rstrip())
    print(
        f"finals: {len(finals)}, latency after their end p50 {percentile(finals, 0.5):.2f} s, "
        f"p95 {percentile(finals, 0.95):.2f} s"
    )
    print(
        f"partials: {len(partials)}, latency p50 {percentile(partials, 0.5):.2f} s, "
        f"p95 {percentile(partials, 0.95):.2f} s"
    )
    return 0 if result.close_code == 1000 else 1


if __name__ == "__main__":
    sys.exit(main())

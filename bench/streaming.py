"""Live streaming: N concurrent real-time streams through /ws/transcribe, against the re-feed scheme.

The stream is synthesised offline with espeak-ng (sentences, real pauses, some long runs of speech
that must be cut at the quietest point), so the true end of every utterance is known. Measured:

- final latency: arrival of the final minus the moment the true end of its utterance's speech was
  sent (this includes the VAD's pause of STREAM_VAD_MIN_SILENCE_MS), and minus the moment the final's
  own `end` was sent; p50/p95 overall and per third of the stream (must not grow);
- partial latency: arrival minus the moment the audio it covers was sent;
- decoded audio seconds per stream second, from the server's counters;
- the official re-feed scheme (every 2 s chunk re-decodes all audio so far): its decoded seconds per
  stream second for the same length (exact count), and, run for real through the same engine for
  the first `--refeed-seconds`, how its per-chunk delay grows.

    .venv/bin/python bench/streaming.py --model DIR [--streams 4] [--minutes 10] [--write-results]

Without `--model`, the tests' tiny "hello world" checkpoint is used (built on first use by
scripts/make_tiny_checkpoint.py, cached in .cache/tiny-checkpoints/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from common import bench_checkpoint
from stream_file import StreamResult, percentile, stream_samples

from asr_server.config import Settings
from asr_server.media.audio import resample
from asr_server.server import create_app
from asr_server.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000
SENTENCES = [
    "The meeting will start again in five minutes.",
    "Please remember to bring the quarterly report with you.",
    "Streaming recognition should keep up with the speaker at all times.",
    "We measured the latency of every final result during the test.",
    "The weather tomorrow will be cloudy with a chance of rain in the afternoon.",
    "Could you repeat the last number once more, slowly?",
    "Seven hundred and forty two people attended the conference this year.",
    "Turn left at the second traffic light and continue straight ahead.",
    "The library closes at eight o'clock on weekdays.",
    "A good caption system never falls behind the conversation.",
    "Thank you all for coming.",
    "Next slide, please.",
]


def synthesise(text: str, voice_speed: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-s", str(voice_speed), "-w", tmp.name, text], check=True, capture_output=True)
        import soundfile as sf

        audio, rate = sf.read(tmp.name, dtype="float32")
    audio = resample(audio, rate, RATE)
    level = np.abs(audio) > 0.01  # trim espeak's own leading/trailing silence: the truth must be exact
    first, last = int(np.argmax(level)), len(level) - int(np.argmax(level[::-1]))
    return 0.5 * audio[first:last] / max(1e-6, float(np.max(np.abs(audio))))


def build_stream(minutes: float, seed: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Speech with pauses, ≥ `minutes` long; returns the audio and the true (start, end) of each utterance."""
    rng = random.Random(seed)
    pieces: list[np.ndarray] = [np.zeros(RATE // 2, np.float32)]
    truth: list[tuple[float, float]] = []
    position = RATE // 2
    cache: dict[tuple[str, int], np.ndarray] = {}
    while position < minutes * 60 * RATE:
        long_run = rng.random() < 0.12  # 12 %: 15-30 s without a pause long enough to end the utterance
        count = rng.randint(4, 7) if long_run else 1
        start = position
        for i in range(count):
            key = (rng.choice(SENTENCES), rng.choice((150, 175, 200)))
            if key not in cache:
                cache[key] = synthesise(*key)
            if i:
                gap = np.zeros(int(rng.uniform(0.08, 0.2) * RATE), np.float32)
                pieces.append(gap)
                position += gap.size
            pieces.append(cache[key])
            position += cache[key].size
        truth.append((start / RATE, position / RATE))
        pause = np.zeros(int(rng.uniform(0.7, 2.5) * RATE), np.float32)
        pieces.append(pause)
        position += pause.size
    return np.concatenate(pieces), truth


def final_latencies(result: StreamResult, truth: list[tuple[float, float]], offset: float) -> list[tuple[float, float]]:
    """(true utterance end, latency after it) for each utterance: the first final reaching past its end."""
    finals = [(at, event) for at, event in result.events if event["type"] == "final"]
    out = []
    for _, end in truth:
        end -= offset
        if end <= 0:
            continue
        hit = next((at for at, event in finals if event["start"] < end <= event["end"] + 0.05), None)
        if hit is not None:
            out.append((end, hit - result.sent_at(end)))
    return out


async def run_streams(url: str, audio: np.ndarray, truth: list[tuple[float, float]], streams: int) -> dict[str, Any]:
    async def one(index: int) -> tuple[StreamResult, float]:
        # Each stream starts at another utterance, and at another moment, so finals do not coincide.
        offset = max(0.0, truth[index * len(truth) // streams][0] - 0.3)
        await asyncio.sleep(index * 0.77)
        rolled = np.roll(audio, -int(offset * RATE))
        return await stream_samples(url, rolled, RATE, speed=1.0, frame_ms=100, language="en"), offset

    results = await asyncio.gather(*(one(i) for i in range(streams)))
    true_lat, partial_lat, thirds = [], [], [[], [], []]
    duration = len(audio) / RATE
    missing = 0
    worst: list[tuple[float, int, float]] = []  # (latency, stream, true end)
    for index, (result, offset) in enumerate(results):
        rolled_truth = [((s - offset) % duration, (e - offset) % duration) for s, e in truth]
        rolled_truth = sorted((s, e) for s, e in rolled_truth if e > s)
        found = final_latencies(result, rolled_truth, 0.0)
        missing += len(rolled_truth) - len(found)
        for end, latency in found:
            true_lat.append(latency)
            worst.append((round(latency, 2), index, round(end, 1)))
            thirds[min(2, int(3 * end / duration))].append(latency)
        partial_lat += result.latencies("partial")
    return {
        "close_codes": sorted({r.close_code for r, _ in results}),
        "utterances": len(truth) * streams,
        "utterances_without_final": missing,
        "finals": sum(len(r.finals) for r, _ in results),
        "partials": len(partial_lat),
        "final_latency_true_end": (percentile(true_lat, 0.5), percentile(true_lat, 0.95)),
        "final_latency_by_third_p50_p95": [(percentile(t, 0.5), percentile(t, 0.95)) for t in thirds],
        "partial_latency": (percentile(partial_lat, 0.5), percentile(partial_lat, 0.95)),
        "worst_finals_latency_stream_end": sorted(worst, reverse=True)[:8],
    }


async def run_refeed(
    base_url: str, audio: np.ndarray, seconds: float, chunk_s: float = 2.0
) -> list[tuple[float, float]]:
    """The official scheme for the first `seconds`, through the same server and engine: every 2 s
    chunk re-decodes all audio heard so far. Returns (stream time, delay of that chunk's result)."""
    import httpx

    from support import encode

    delays = []
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        started = time.monotonic()
        for k in range(1, int(seconds / chunk_s) + 1):
            due = started + k * chunk_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            heard = encode(audio[: int(k * chunk_s * RATE)], RATE)
            response = await client.post("/transcribe", files={"file": ("heard.wav", heard)}, data={"language": "en"})
            response.raise_for_status()
            delays.append((k * chunk_s, time.monotonic() - due))
    return delays


def refeed_ratio(stream_seconds: float, chunk_s: float = 2.0) -> float:
    chunks = int(stream_seconds / chunk_s)
    return sum(k * chunk_s for k in range(1, chunks + 1)) / stream_seconds


def serve(port: int, model: str, max_new_tokens: int, cpu_threads: int, snapshot: str) -> None:
    """Server mode (a separate process, so the clients do not share its GIL): on exit, dump the
    stream counters to `snapshot`."""
    import uvicorn

    settings = Settings(
        model_id=model,
        forced_aligner_id="",
        max_new_tokens=max_new_tokens,
        cpu_threads=cpu_threads,
        preload=True,
        log_level="WARNING",
    )
    app = create_app(settings)
    engine = app.state.services.worker.engine
    batches: list[tuple[int, float, float]] = []  # (jobs, audio seconds, engine seconds)
    transcribe = engine.transcribe

    def timed(items: list[Any]) -> list[Any]:
        started = time.perf_counter()
        try:
            return transcribe(items)
        finally:
            audio_s = sum(item.audio.size for item in items) / RATE
            batches.append((len(items), audio_s, time.perf_counter() - started))

    engine.transcribe = timed
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    finally:
        stream_settings = {k: v for k, v in settings.model_dump().items() if k.startswith("stream_")}
        engine_stats = {
            "batches": len(batches),
            "jobs": sum(b[0] for b in batches),
            "busy_seconds": sum(b[2] for b in batches),
            "seconds_per_batch_p50_p95": (
                percentile([b[2] for b in batches], 0.5),
                percentile([b[2] for b in batches], 0.95),
            ),
        }
        Path(snapshot).write_text(
            json.dumps(
                {"server": app.state.services.streams.snapshot(), "settings": stream_settings, "engine": engine_stats}
            )
        )


def start_server(
    model: str, max_new_tokens: int, cpu_threads: int, snapshot: Path
) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    command = [sys.executable, __file__, "--serve", str(port), "--model", model]
    command += ["--max-new-tokens", str(max_new_tokens), "--cpu-threads", str(cpu_threads), "--snapshot", str(snapshot)]
    process = subprocess.Popen(command)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/ready", timeout=2).json().get("loaded"):
                return process, base
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description="live streaming benchmark")
    parser.add_argument("--model", help="Qwen3-ASR checkpoint directory (default: build the tiny hello one)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--refeed-seconds", type=float, default=120.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--cpu-threads", type=int, default=1, help="engine threads (1 is steadiest on a small shared machine)"
    )
    parser.add_argument("--write-results", action="store_true", help="write bench/streaming_results.md")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.model, args.max_new_tokens, args.cpu_threads, args.snapshot)
        return 0
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed to synthesise the speech (apt-get install espeak-ng)")
    model = args.model
    if model is None:  # the "hello world" checkpoint (built on first use)
        model = str(bench_checkpoint("qwen3-asr-hello", "--hello"))
    audio, truth = build_stream(args.minutes, args.seed)
    duration = len(audio) / RATE
    print(f"stream: {duration:.0f} s, {len(truth)} utterances, {args.streams} concurrent streams", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "snapshot.json"
        server, base = start_server(model, args.max_new_tokens, args.cpu_threads, snapshot)
        load_before = os.getloadavg()[0]
        try:
            started = time.monotonic()
            report = asyncio.run(run_streams(base.replace("http", "ws") + "/ws/transcribe", audio, truth, args.streams))
            report["wall_seconds"] = time.monotonic() - started
            report["load_average"] = (load_before, os.getloadavg()[0])
            refeed = asyncio.run(run_refeed(base, audio, args.refeed_seconds)) if args.refeed_seconds > 0 else []
            report["wall_seconds_with_refeed"] = time.monotonic() - started
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
        report.update(json.loads(snapshot.read_text()))
    report["refeed_ratio_exact"] = refeed_ratio(duration)
    report["refeed_delay_by_stream_second"] = refeed[4::10]
    report.update(model=model, streams=args.streams, stream_seconds=duration)
    print(json.dumps(report, indent=2, default=str))
    if args.write_results:
        (ROOT / "bench" / "streaming_results.md").write_text(markdown(report, args))
    return 0


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    server, engine = report["server"], report["engine"]
    fmt = lambda pair: f"{pair[0]:.2f} / {pair[1]:.2f} s"  # noqa: E731
    thirds = " · ".join(fmt(t) for t in report["final_latency_by_third_p50_p95"])
    refeed = ", ".join(f"{t:.0f} s → {d:.2f} s" for t, d in report["refeed_delay_by_stream_second"])
    audio_s = server["stream_audio_seconds_total"] or 1.0
    partial_ratio = server["stream_partial_decoded_seconds_total"] / audio_s
    final_ratio = server["stream_final_decoded_seconds_total"] / audio_s
    ratio = server["stream_decode_ratio"]
    server_delay = (server["stream_final_delay_p50_seconds"], server["stream_final_delay_p95_seconds"])
    load = [f"{x:.1f}" for x in report["load_average"]]
    true_end = fmt(report["final_latency_true_end"])
    wall = report["wall_seconds_with_refeed"]
    return f"""## Streaming

`.venv/bin/python {" ".join(sys.argv)}` — {report["streams"]} concurrent real-time streams of
{report["stream_seconds"]:.0f} s each (espeak-ng speech with real pauses and some 15–30 s runs without one,
{report["utterances"] // report["streams"]} utterances per stream), tiny "hello world" Qwen3-ASR checkpoint
(max_new_tokens {args.max_new_tokens}, {args.cpu_threads} engine thread), 2-core CPU shared with other work
(1-minute load average {load[0]} at the start, {load[1]} at the end). Server defaults: partial budget 1.5,
partial interval 1 s, pause 500 ms, utterances ≤ 15 s, silero VAD.

| measure | value |
|---|---|
| decoded audio s per stream s, ours | **{ratio:.2f}** (partials {partial_ratio:.2f}, finals {final_ratio:.2f}) |
| decoded audio s per stream s, re-feed every 2 s (official scheme), same length | {report["refeed_ratio_exact"]:.1f} |
| final latency after the true end of speech (includes the 500 ms pause), p50 / p95 | **{true_end}** |
| … per third of the stream, p50 / p95 | {thirds} |
| final delay measured by the server (last speech frame in → final out), p50 / p95 | {fmt(server_delay)} |
| partial latency (audio sent → partial received), p50 / p95 | {fmt(report["partial_latency"])} |
| utterances without a final | {report["utterances_without_final"]} of {report["utterances"]} |
| finals / partials received | {report["finals"]} / {report["partials"]} |
| largest lag (oldest final waiting for the model) | {server["stream_lag_seconds_max"]:.2f} s |
| engine busy (streams, then the re-feed run) | {engine["busy_seconds"]:.0f} s of {wall:.0f} s |
| re-feed scheme run for real on the same server, delay of each 2 s chunk's result | {refeed} |

The re-feed delay grows with the stream (each chunk decodes everything heard so far); ours does not.
"""


if __name__ == "__main__":
    sys.exit(main())

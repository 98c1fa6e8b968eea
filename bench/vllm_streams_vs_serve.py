"""Live streams on the vLLM engine against `vllm serve`'s own /v1/realtime: same checkpoint, same speech, same run.

Run in the vLLM venv. Two servers, one after the other (they would share the cores), each with the same KV-cache size
and compilation mode, each given the same `--streams` real-time streams of the same espeak-ng speech (the builder of
bench/streaming.py: real pauses, the true end of every utterance known; stream i starts at another utterance, 0.77 s
after stream i-1, as there) in 100 ms chunks, while a 10 s clip is uploaded every `--upload-every` s:

- A, this service (`asr-server serve`, USE_VLLM=1): streams through /ws/transcribe (VAD-cut utterances, partials,
  one final per utterance). Final delay = arrival of the final covering an utterance's true end minus the moment that
  end was sent (includes the VAD's pause); decoded audio per stream second from the server's /metrics counters.
- B, raw `vllm serve` with the Qwen3ASRRealtimeGeneration architecture override: streams through /v1/realtime
  (`session.update`, `input_audio_buffer.commit`, base64 PCM16 `input_audio_buffer.append`, a final commit). vLLM cuts
  each stream into fixed 5 s segments (no VAD) and decodes each once, appending it to one growing request per stream;
  text comes back as `transcription.delta` tokens with no segment marker, so each segment's text is found by the
  model's own "language X<asr_text>" header (or, for a model without it, by the empty delta of its stop token).
  Segment delay = arrival of a segment's last text minus the moment its last audio was sent; utterance delay =
  arrival of the last text of the segment holding the utterance's true end minus the moment that end was sent.

With `--model hello` (the default) the checkpoint is the tests' tiny hello one (head_dim 64, trained to answer
"hello world" for any audio): a correct final is exactly "hello world", per utterance (A) and per 5 s segment (B).
With `--model DIR` (e.g. a random 0.6B-dimension checkpoint) the load is the real size's and correctness is not judged.

    .venv-vllm/bin/python bench/vllm_streams_vs_serve.py [--model hello|DIR] [--streams 8] [--minutes 10]
        [--upload-every 5] [--kv-cache-gib 4] [--serve-kv-cache-gib N] [--max-new-tokens 32] [--eager]
        [--only ours|vllm]

`--max-new-tokens` bounds our answers and `vllm serve`'s uploads; its realtime answers are capped at 64 tokens per
segment by the model class, which no request can change. Its per-stream context grows by ~145 tokens per segment
(max-model-len is sized for the whole stream, and the KV it needs is printed at the start). Server logs go to
/tmp/bench-streams-{ours,vllm}-PORT.log.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import wav_bytes
from stream_file import StreamResult, percentile, stream_samples
from vllm_vs_serve import BIN, _process

from asr_server.testing import free_port
from streaming import RATE, build_stream, final_latencies

ROOT = Path(__file__).resolve().parents[1]
HELLO = "hello world"
FRAME_MS = 100.0
SEGMENT_S = 5.0  # Qwen3ASRRealtimeGeneration.buffer_realtime_audio: fixed 5 s segments
REALTIME_MAX_TOKENS = 64  # Qwen3ASRRealtimeGeneration.realtime_max_tokens: per segment, not settable per request
HEADER = re.compile(r"language [^<]*<asr_text>")  # how Qwen3-ASR starts every answer


def hello_checkpoint() -> Path:
    """The tests' hello-vllm-asr checkpoint (tests/conftest.py's cache), else one built into .cache/bench/."""
    script = ROOT / "scripts" / "make_tiny_checkpoint.py"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
    cached = ROOT / ".cache" / "tiny-checkpoints" / f"hello-vllm-asr-{digest}"
    if (cached / "config.json").exists():
        return cached
    target = ROOT / ".cache" / "bench" / "hello-vllm-asr"
    if not (target / "config.json").exists():
        python = os.environ.get("CHECKPOINT_PYTHON") or str(ROOT / ".venv" / "bin" / "python")  # needs qwen-asr
        print(f"building the hello checkpoint in {target} (about 75 s)", flush=True)
        subprocess.run([python, str(script), str(target), "--hello", "--dims", "tiny-vllm"], check=True)
    return target


def kv_bytes_per_token(model_dir: str) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    text = config["thinker_config"]["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    width = 4 if config.get("dtype", text.get("dtype")) == "float32" else 2
    return text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * 2 * width


# --------------------------------------------------------------------------------------------- the two stream clients
def stream_offsets(truth: list[tuple[float, float]], streams: int) -> list[float]:
    """Where stream i starts in the speech: bench/streaming.py's run_streams formula, so both servers hear the same."""
    return [max(0.0, truth[i * len(truth) // streams][0] - 0.3) for i in range(streams)]


def rolled_truth(truth: list[tuple[float, float]], offset: float, duration: float) -> list[tuple[float, float]]:
    rolled = [((s - offset) % duration, (e - offset) % duration) for s, e in truth]
    return sorted((s, e) for s, e in rolled if e > s)


async def realtime_stream(url: str, samples: np.ndarray, model: str, timeout_s: float) -> StreamResult:
    """Stream to vLLM's /v1/realtime at real time (absolute schedule, like stream_samples); collect every event."""
    import websockets

    frame = int(RATE * FRAME_MS / 1000)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    result = StreamResult(frame_seconds=frame / RATE)
    async with websockets.connect(url, max_size=None) as ws:
        created = json.loads(await ws.recv())
        if created.get("type") != "session.created":
            raise RuntimeError(f"expected session.created, got {created}")
        await ws.send(json.dumps({"type": "session.update", "model": model}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # starts the generation
        result.started = time.monotonic()

        async def send() -> None:
            for k, offset in enumerate(range(0, len(pcm), frame)):
                delay = result.started + k * result.frame_seconds - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                chunk = base64.b64encode(pcm[offset : offset + frame].tobytes()).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                result.send_times.append(time.monotonic())
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))

        sender = asyncio.create_task(send())
        try:
            while True:
                remaining = result.started + len(samples) / RATE + timeout_s - time.monotonic()
                event = json.loads(await asyncio.wait_for(ws.recv(), max(1.0, remaining)))
                result.events.append((time.monotonic(), event))
                if event["type"] == "transcription.done":
                    break
        except (asyncio.TimeoutError, websockets.ConnectionClosed) as error:
            result.close_reason = type(error).__name__
        finally:
            sender.cancel()
        result.close_code = 1000 if result.events and result.events[-1][1]["type"] == "transcription.done" else None
    result.finished = time.monotonic()
    return result


@dataclass
class Segment:
    first: float  # arrival of the segment's first text
    last: float  # arrival of its last text
    text: str  # the transcript, header removed


def split_segments(events: list[tuple[float, dict[str, Any]]]) -> tuple[list[Segment], str]:
    """The 5 s segments' answers in a realtime stream's deltas, and how they were told apart.

    vLLM sends one delta per engine output, but merges outputs when its API server falls behind, so one delta may end
    a segment and start the next. Qwen3-ASR starts every answer with "language X<asr_text>": split the text there.
    A model that does not (random weights) is split at the empty delta of each stop token, or after
    REALTIME_MAX_TOKENS deltas: approximate, as merged deltas hide both."""
    deltas = [(at, event["delta"]) for at, event in events if event["type"] == "transcription.delta"]
    text = "".join(delta for _, delta in deltas)
    headers = list(HEADER.finditer(text))
    if headers:
        ends = list(np.cumsum([len(delta) for _, delta in deltas]))  # ends[i]: text offset just past delta i
        arrival = lambda char: deltas[bisect.bisect_right(ends, char)][0]  # noqa: E731
        starts = [m.start() for m in headers] + [len(text)]
        return [
            Segment(arrival(start), arrival(stop - 1), text[header.end() : stop].strip())
            for header, start, stop in zip(headers, starts, starts[1:], strict=False)
        ], "header"
    segments: list[Segment] = []
    current: list[tuple[float, str]] = []
    for at, delta in deltas:
        if delta:
            current.append((at, delta))
        if current and (not delta or len(current) >= REALTIME_MAX_TOKENS):
            segments.append(Segment(current[0][0], current[-1][0], "".join(d for _, d in current).strip()))
            current = []
    if current:
        segments.append(Segment(current[0][0], current[-1][0], "".join(d for _, d in current).strip()))
    return segments, "stop token (approximate)"


# ------------------------------------------------------------------------------------------------------ the uploads
async def upload_loop(url: str, clip: bytes, every: float, extra: dict[str, str], stop: asyncio.Event) -> list[Any]:
    """POST `clip` to /v1/audio/transcriptions every `every` s (without waiting for the previous) until `stop`."""
    results: list[tuple[float, str | None]] = []  # (latency, text or None when it failed)
    async with httpx.AsyncClient(base_url=url, timeout=900) as http:

        async def one() -> None:
            started = time.monotonic()
            try:
                response = await http.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("clip.wav", clip)},
                    data={"model": "m", "language": "en", **extra},
                )
                response.raise_for_status()
                results.append((time.monotonic() - started, response.json()["text"]))
            except httpx.HTTPError:
                results.append((time.monotonic() - started, None))

        tasks = []
        while every > 0 and not stop.is_set():
            tasks.append(asyncio.create_task(one()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
        await asyncio.gather(*tasks)
    return results


# ------------------------------------------------------------------------------------------------------ the two loads
def p50_p95(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else round(v, 3) for v in (percentile(values, 0.5), percentile(values, 0.95))]


def scrape(url: str, prefix: str = "asr_stream") -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix) and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("asr_")] = float(value)
    return out


async def run_load(
    kind: str,
    url: str,
    audio: np.ndarray,
    truth: list[tuple[float, float]],
    args: argparse.Namespace,
    expected: str | None,
) -> dict[str, Any]:
    duration = len(audio) / RATE
    offsets = stream_offsets(truth, args.streams)
    ws_url = url.replace("http", "ws", 1) + ("/ws/transcribe" if kind == "ours" else "/v1/realtime")

    async def one(index: int) -> StreamResult:
        await asyncio.sleep(index * 0.77)
        rolled = np.roll(audio, -int(offsets[index] * RATE))
        if kind == "ours":
            return await stream_samples(ws_url, rolled, RATE, speed=1.0, frame_ms=FRAME_MS, language="en")
        return await realtime_stream(ws_url, rolled, "m", timeout_s=max(120.0, duration))

    stop = asyncio.Event()
    extra = {} if kind == "ours" else {"max_completion_tokens": str(args.max_new_tokens)}
    clip = wav_bytes(audio[: 10 * RATE])
    uploads_task = asyncio.create_task(upload_loop(url, clip, args.upload_every, extra, stop))
    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(args.streams)))
    wall = time.monotonic() - started
    stop.set()
    uploads = await uploads_task

    utterance_delays: list[float] = []
    first_text_delays: list[float] = []  # B: the segment's first delta instead of its last
    segment_delays: list[float] = []
    thirds: list[list[float]] = [[], [], []]
    utterances = found = correct = outputs = outputs_correct = 0
    methods, segment_counts = set(), []
    for index, result in enumerate(results):
        stream_truth = rolled_truth(truth, offsets[index], duration)
        utterances += len(stream_truth)
        if kind == "ours":
            finals = result.finals
            outputs += len(finals)
            outputs_correct += sum(final["text"].strip() == expected for final in finals)
            for end, latency in final_latencies(result, stream_truth, 0.0):
                found += 1
                utterance_delays.append(latency)
                thirds[min(2, int(3 * end / duration))].append(latency)
                covering = next(f for f in finals if f["start"] < end <= f["end"] + 0.05)  # as final_latencies
                correct += covering["text"].strip() == expected
            continue
        segments, method = split_segments(result.events)
        methods.add(method)
        expected_segments = math.ceil(len(audio) / (SEGMENT_S * RATE))
        segment_counts.append((len(segments), expected_segments))
        outputs += len(segments)
        outputs_correct += sum(segment.text == expected for segment in segments)
        for k, segment in enumerate(segments[:expected_segments]):
            segment_delays.append(segment.last - result.sent_at(min((k + 1) * SEGMENT_S, duration)))
        for _, end in stream_truth:
            k = max(0, math.ceil(end / SEGMENT_S) - 1)  # the segment holding the true end
            if k >= len(segments):
                continue
            found += 1
            latency = segments[k].last - result.sent_at(end)
            utterance_delays.append(latency)
            first_text_delays.append(segments[k].first - result.sent_at(end))
            thirds[min(2, int(3 * end / duration))].append(latency)
            correct += segments[k].text == expected

    upload_latencies = [latency for latency, text in uploads if text is not None]
    report: dict[str, Any] = {
        "server": "this service, USE_VLLM=1" if kind == "ours" else "`vllm serve` /v1/realtime",
        "streams": args.streams,
        "minutes": args.minutes,
        "stream_seconds": round(duration, 1),
        "wall_seconds": round(wall, 1),
        "close_codes": sorted({str(r.close_code) for r in results}),
        "utterances": utterances,
        "utterances_without_text": utterances - found,
        "final_delay_p50_p95": p50_p95(utterance_delays),
        "final_delay_by_third_p50_p95": [p50_p95(t) for t in thirds],
        "uploads": len(uploads),
        "uploads_failed": sum(text is None for _, text in uploads),
        "upload_latency_p50_p95": p50_p95(upload_latencies),
    }
    if expected is not None:
        report["utterances_correct"] = correct
        report["outputs_correct"] = [outputs_correct, outputs]  # finals (A) or 5 s segments (B)
        report["uploads_correct"] = sum(text is not None and text.strip() == expected for _, text in uploads)
    if kind == "ours":
        server = scrape(url)
        audio_s = server.get("stream_audio_seconds_total") or 1.0
        report.update(
            decoded_audio_ratio=round(server.get("stream_decode_ratio", float("nan")), 3),
            partial_decoded_ratio=round(server.get("stream_partial_decoded_seconds_total", 0.0) / audio_s, 3),
            final_decoded_ratio=round(server.get("stream_final_decoded_seconds_total", 0.0) / audio_s, 3),
            server_final_delay_p50_p95=[
                round(server.get("stream_final_delay_p50_seconds", float("nan")), 3),
                round(server.get("stream_final_delay_p95_seconds", float("nan")), 3),
            ],
            server_lag_max_seconds=server.get("stream_lag_seconds_max"),
            partial_latency_p50_p95=p50_p95([x for r in results for x in r.latencies("partial")]),
            finals=outputs,
        )
    else:
        report.update(
            decoded_audio_ratio=1.0,  # every sample is in exactly one 5 s segment, encoded and prefilled once
            segment_delay_p50_p95=p50_p95(segment_delays),
            first_text_delay_p50_p95=p50_p95(first_text_delays),
            segments_received_expected=[sum(c[0] for c in segment_counts), sum(c[1] for c in segment_counts)],
            segmentation=sorted(methods),
            errors=[e for r in results for _, e in r.events if e["type"] == "error"][:5],
        )
    return report


# -------------------------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hello", help='"hello" (the tiny hello checkpoint) or a checkpoint dir')
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--upload-every", type=float, default=5.0, help="seconds between uploads (0: none)")
    parser.add_argument("--kv-cache-gib", type=float, default=4.0)
    parser.add_argument("--serve-kv-cache-gib", type=float, help="for `vllm serve` only (default: --kv-cache-gib)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="ours, and `vllm serve`'s uploads")
    parser.add_argument("--eager", action="store_true", help="both without graph compilation (a faster start)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=("ours", "vllm"), help="run one server only")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed to synthesise the speech (apt-get install espeak-ng)")
    model = str(hello_checkpoint()) if args.model == "hello" else args.model
    expected = HELLO if args.model == "hello" else None
    audio, truth = build_stream(args.minutes, args.seed)
    duration = len(audio) / RATE
    print(f"model {model}; stream {duration:.0f} s, {len(truth)} utterances, {args.streams} streams", flush=True)

    # vLLM keeps one request per realtime stream and appends every segment to it (prompt + 65 audio tokens + up to
    # 64 answer tokens): its context, and KV cache, grow with the stream.
    segments = math.ceil(duration / SEGMENT_S) + 1
    max_len = min(65_536, segments * (16 + 65 + REALTIME_MAX_TOKENS) + 512)
    serve_gib = args.serve_kv_cache_gib or args.kv_cache_gib
    need_gib = args.streams * max_len * kv_bytes_per_token(model) / 2**30
    short = " (short: vLLM will preempt)" if need_gib > serve_gib else ""
    print(f"`vllm serve`: max-model-len {max_len}; KV for {args.streams} whole streams ≤ {need_gib:.3g} GiB", end="")
    print(f" of {serve_gib:g} GiB{short}", flush=True)

    ours_port, raw_port = free_port(), free_port()
    ours = [str(BIN / "asr-server"), "serve", "--port", str(ours_port), "--host", "127.0.0.1"]
    ours_env = {
        "USE_VLLM": "1", "MODEL_ID": model, "FORCED_ALIGNER_ID": "", "PRELOAD": "1",
        "MAX_NEW_TOKENS": str(args.max_new_tokens), "VLLM_KV_CACHE_GIB": str(args.kv_cache_gib),
        "LOG_LEVEL": "WARNING", "VLLM_ENFORCE_EAGER": "1" if args.eager else "0", "QUEUE_MAX": "4096",
        "STREAM_MAX_CONCURRENT": str(max(16, args.streams)),
    }  # fmt: skip
    raw = [str(BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--hf-overrides", json.dumps({"architectures": ["Qwen3ASRRealtimeGeneration"]}),
           "--port", str(raw_port), "--max-model-len", str(max_len),
           "--kv-cache-memory-bytes", str(int(serve_gib * 2**30)), "--served-model-name", "m",
           *(["--enforce-eager"] if args.eager else [])]  # fmt: skip
    servers = [("ours", ours, ours_env, ours_port), ("vllm", raw, {}, raw_port)]
    reports = []
    for kind, command, env, port in servers:
        if args.only and kind != args.only:
            continue
        print(f"{kind}:", flush=True)
        with _process(command, env, port, Path(f"/tmp/bench-streams-{kind}-{port}.log")) as url:
            warm = wav_bytes(audio[: 2 * RATE])
            httpx.post(
                url + "/v1/audio/transcriptions", files={"file": ("w.wav", warm)}, data={"model": "m"}, timeout=600
            )
            if kind == "vllm":  # the realtime path has its own processor: warm it too (1 s, one segment)
                asyncio.run(realtime_stream(url.replace("http", "ws", 1) + "/v1/realtime", audio[:RATE], "m", 120))
            load_before = os.getloadavg()[0]
            report = asyncio.run(run_load(kind, url, audio, truth, args, expected))
            report["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        print(json.dumps(report), flush=True)
        reports.append(report)
    print(markdown(reports))
    return 0


def markdown(reports: list[dict[str, Any]]) -> str:
    pair = lambda p: "—" if not p or p[0] is None else f"{p[0]:.2f} / {p[1]:.2f} s"  # noqa: E731
    lines = [
        "| server | streams | minutes | final delay p50/p95 (per utterance) | segment delay p50/p95 (B) "
        "| decoded audio s per stream s | finals correct | upload latency p50/p95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        if "utterances_correct" in r:
            unit = "finals" if "finals" in r else "segments"
            ok, total = r["outputs_correct"]
            correct = f"{r['utterances_correct']}/{r['utterances']} utterances ({ok}/{total} {unit})"
        else:
            correct = "n/a (no expected text)"
        lines.append(
            f"| {r['server']} | {r['streams']} | {r['minutes']:g} | {pair(r['final_delay_p50_p95'])} "
            f"| {pair(r.get('segment_delay_p50_p95'))} | {r['decoded_audio_ratio']:.2f} | {correct} "
            f"| {pair(r['upload_latency_p50_p95'])} ({r['uploads']} uploads, {r['uploads_failed']} failed) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

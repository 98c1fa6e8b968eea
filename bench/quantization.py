"""QUANTIZE on this CPU: speed, memory and token drift, on a random-weight checkpoint of real dimensions.

Four parts, each its own command (each well under 10 minutes on an idle 2-core machine):

- `--part memory`: one fresh process per mode (fp32, bf16, int8) loads the model through the service's
  engine and reports the resident set after load and after one batch (freed heap returned to the OS first,
  in every mode), the peak of the load and the peak during the batch.
- `--part speed`: int8 and fp32 (bf16 with `--modes`) loaded in ONE process and timed in alternation (the
  machine is shared and noisy: paired runs, medians), at batch 1 and at `--batch`. Generation is forced to
  exactly `--tokens` new tokens (random weights stop at arbitrary points).
- `--part service`: the CPU mode of the service (the defaults of a machine without GPU + QUANTIZE=int8)
  over HTTP with `--concurrency` requests, alternated with direct int8 calls at `--batch` on the same model.
- `--part drift`: greedy tokens of int8 vs fp32 on the same inputs: whole-sequence matches, positions equal,
  teacher-forced top-1 agreement (int8 predicting each next token of the fp32 output: drift per step,
  without one early difference changing everything after it) and the relative error of the logits.

    .venv/bin/python bench/quantization.py --part memory [--dims 0.6b] [--batch 8]
    .venv/bin/python bench/quantization.py --part speed [--modes fp32,int8] [--batch 8] [--repeats 3]
    .venv/bin/python bench/quantization.py --part service [--batch 8] [--concurrency 16] [--repeats 2]
    .venv/bin/python bench/quantization.py --part drift [--clips 8] [--untied-head]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import bench_checkpoint, noise_clips, peak_rss, post_uploads, rss_mb, wav_bytes

from asr_server.config import Settings
from asr_server.engines.quantization import _release_freed_memory
from asr_server.engines.transformers_engine import TransformersEngine
from asr_server.server import create_app
from asr_server.testing import running_server

ROOT = Path(__file__).resolve().parents[1]
# mode -> (DTYPE, QUANTIZE). On CPU int8 runs float32 around its int8 matmuls; on a GPU it and fp8 are
# torchao weight-only in bf16 (see src/engines/quantization.py).
MODES = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none"), "int8": ("float32", "int8")}
GPU_MODES = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none"), "int8": ("bfloat16", "int8"),
             "fp8": ("bfloat16", "fp8")}  # fmt: skip


def _checkpoint(dims: str) -> Path:
    return bench_checkpoint(f"qwen3-asr-{dims}-random", "--dims", dims)


def _settings(args: argparse.Namespace, mode: str, **overrides: Any) -> Settings:
    dtype, quantize = (MODES if args.device == "cpu" else GPU_MODES)[mode]
    base: dict[str, Any] = {
        "model_id": str(_checkpoint(args.dims)),
        "forced_aligner_id": "",
        "device": args.device,
        "dtype": dtype,
        "quantize": quantize,
        "max_new_tokens": args.tokens,
        "max_batch_size": args.batch,
        "warmup": False,
        "log_level": "WARNING",
        "request_timeout": 3600,
    }
    return Settings(**{**base, **overrides})


def _loaded(engine: TransformersEngine, tokens: int) -> TransformersEngine:
    """Load if needed (the server unloads at shutdown), force fixed-length generation, warm up."""
    if not engine.loaded:
        engine.load()
        engine._model.model.thinker.generation_config.min_new_tokens = tokens
        engine._model.transcribe(audio=[(noise_clips(1, 2.0)[0], 16_000)])
    return engine


# ------------------------------------------------------------------------------------------ memory
def _cuda() -> Any:
    import torch

    return torch.cuda


def memory_case(args: argparse.Namespace, mode: str) -> dict[str, float]:
    """In this (fresh) process: RSS after load, peak of the load, peak of one batch of `--batch` clips."""
    before = rss_mb()
    engine = TransformersEngine(_settings(args, mode))
    engine.load()
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _release_freed_memory()  # every mode alike: count what stays, not what glibc has not handed back yet
    after_load = rss_mb()
    # On a GPU its own figures: what the allocator holds after load, and its peak over the load and a batch.
    gpu = {"gpu_after_load": _cuda().memory_allocated() / 2**20} if args.device != "cpu" else {}
    engine._model.model.thinker.generation_config.min_new_tokens = args.tokens
    with peak_rss() as peak:
        engine._model.transcribe(audio=[(c, 16_000) for c in noise_clips(args.batch, args.clip_seconds)])
    _release_freed_memory()
    # After a batch every weight page has been touched: a bf16 checkpoint loaded as bf16 stays memory-mapped
    # from the file, and counts as resident only once it is read.
    if gpu:
        gpu["gpu_peak"] = _cuda().max_memory_allocated() / 2**20
    quantized = engine.describe()["quantize"]
    weights = quantized["weight_bytes"] if isinstance(quantized, dict) else None
    return {"before_load": before, "after_load": after_load, "load_peak": load_peak, "batch_peak": peak[0],
            "after_batch": rss_mb(), "weights": weights, **gpu}  # fmt: skip


def part_memory(args: argparse.Namespace) -> None:
    print(f"dims {args.dims}, batch of {args.batch} x {args.clip_seconds:g} s clips, {args.tokens} tokens; "
          "one fresh process per mode")  # fmt: skip
    print("| mode | RSS after load | vs fp32 | RSS after a batch | vs fp32 | peak during load | peak during a batch |")
    print("|---|---|---|---|---|---|---|")
    base = None
    notes: list[str] = []
    for mode in args.modes.split(","):
        command = [sys.executable, __file__, "--memory-case", mode, "--dims", args.dims, "--batch", str(args.batch),
                   "--tokens", str(args.tokens), "--clip-seconds", str(args.clip_seconds),
                   "--device", args.device]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        case = json.loads(out.strip().splitlines()[-1])
        base = base or case
        print(f"| {mode} | {case['after_load']:.0f} MB | {case['after_load'] / base['after_load']:.0%} | "
              f"{case['after_batch']:.0f} MB | {case['after_batch'] / base['after_batch']:.0%} | "
              f"{case['load_peak']:.0f} MB | {case['batch_peak']:.0f} MB |")  # fmt: skip
        if "gpu_peak" in case:
            notes.append(f"{mode} on {args.device}: {case['gpu_after_load']:.0f} MB allocated after load, "
                         f"peak {case['gpu_peak']:.0f} MB")  # fmt: skip
        if case["weights"]:
            before, after = (case["weights"][k] / 2**20 for k in ("unquantized", "quantized"))
            notes.append(f"{mode}: the model's weights take {after:.0f} MB, against {before:.0f} MB in float32 "
                         f"({after / before:.0%})")  # fmt: skip
    print(f"RSS before load (imports): {case['before_load']:.0f} MB")
    print("\n".join(notes))


# ------------------------------------------------------------------------------------------- speed
def _direct(engine: TransformersEngine, clips: list[np.ndarray], batch: int) -> tuple[float, float]:
    """(RTF by wall time, CPU seconds per audio second) of qwen-asr's transcribe() in batches of `batch`."""
    model = engine._model
    model.max_inference_batch_size = batch
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(clips), batch):
        model.transcribe(audio=[(c, 16_000) for c in clips[i : i + batch]])
    audio = sum(len(c) for c in clips) / 16_000
    return (time.perf_counter() - wall) / audio, (time.process_time() - cpu) / audio


def part_speed(args: argparse.Namespace) -> None:
    import torch

    modes = args.modes.split(",")
    # int8 first: its load peaks at the float32 size, better before a float32 model is resident.
    order = sorted(modes, key="int8".__ne__)
    engines = {m: _loaded(TransformersEngine(_settings(args, m)), args.tokens) for m in order}
    singles, batch = noise_clips(1, args.clip_seconds, seed=1), noise_clips(args.batch, args.clip_seconds, seed=2)
    rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):  # alternate the modes: noise from other work hits them alike
        for size, clips in ((1, singles), (args.batch, batch)):
            for mode in modes:
                rows.setdefault((mode, size), []).append(_direct(engines[mode], clips, size))
                print(f"{mode} batch {size}: RTF {rows[mode, size][-1][0]:.3f}", file=sys.stderr, flush=True)
    print(f"dims {args.dims}, {args.clip_seconds:g} s clips, {args.tokens} tokens each, {torch.get_num_threads()} "
          f"threads; median of {args.repeats} alternated runs")  # fmt: skip
    print("| mode | batch | RTF (wall) | all runs | CPU s per audio s |")
    print("|---|---|---|---|---|")
    median: dict[tuple[str, int], float] = {}
    for (mode, size), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        median[mode, size] = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        walls = ", ".join(f"{r[0]:.2f}" for r in runs)
        print(f"| {mode} | {size} | {median[mode, size]:.2f} | {walls} | {cpu:.2f} |")
    if "fp32" in modes and "int8" in modes:
        for size in (1, args.batch):
            pairs = [f[0] / q[0] for f, q in zip(rows["fp32", size], rows["int8", size], strict=True)]
            print(f"int8 speed-up over fp32 at batch {size}: {median['fp32', size] / median['int8', size]:.2f}x "
                  f"(per pair: {', '.join(f'{p:.2f}' for p in pairs)})")  # fmt: skip


def part_service(args: argparse.Namespace) -> None:
    """The CPU mode over HTTP: the defaults a machine without GPU gets (DEVICE/DTYPE auto, CPU_THREADS 0),
    QUANTIZE=int8 and MAX_BATCH_SIZE=--batch, alternated with direct int8 calls on the same loaded model."""
    engine = _loaded(TransformersEngine(_settings(args, "int8")), args.tokens)
    settings = Settings(
        model_id=str(_checkpoint(args.dims)), forced_aligner_id="", quantize="int8", max_batch_size=args.batch,
        max_new_tokens=args.tokens, warmup=False, log_level="WARNING", request_timeout=3600,
        **({"batch_wait_ms": args.batch_wait_ms} if args.batch_wait_ms is not None else {}),
    )  # fmt: skip
    clips = noise_clips(args.concurrency, args.clip_seconds, seed=3)
    direct: list[float] = []
    service: list[float] = []
    batches: list[int] = []

    def run_direct() -> None:
        direct.append(_direct(_loaded(engine, args.tokens), clips, args.batch)[0])
        print(f"direct int8 batch {args.batch}: RTF {direct[-1]:.3f}", file=sys.stderr, flush=True)

    def run_service() -> None:
        _loaded(engine, args.tokens)._model.max_inference_batch_size = args.batch
        app = create_app(settings, engine=engine)
        with running_server(app) as url:
            elapsed = asyncio.run(post_uploads(url, [wav_bytes(c) for c in clips], args.concurrency))
            metrics = httpx.get(f"{url}/metrics").text
        service.append(elapsed / (len(clips) * args.clip_seconds))
        counts = [float(m.split()[-1]) for m in metrics.splitlines() if m.startswith("asr_batch_size_count")]
        batches.append(round(sum(counts)))
        engine_s = sum(float(m.split()[-1]) for m in metrics.splitlines() if m.startswith("asr_inference_seconds_sum"))
        print(f"service: RTF {service[-1]:.3f} in {batches[-1]} batches, engine {engine_s:.1f} of {elapsed:.1f} s",
              file=sys.stderr, flush=True)  # fmt: skip

    for i in range(args.repeats):  # A-B, B-A, ...: drift and noise from other work hit both alike
        for run in (run_direct, run_service) if i % 2 == 0 else (run_service, run_direct):
            run()
    ratios = [s / d for s, d in zip(service, direct, strict=True)]
    print(f"dims {args.dims}, {args.concurrency} x {args.clip_seconds:g} s clips, {args.tokens} tokens each, int8, "
          f"BATCH_WAIT_MS {settings.batch_wait_ms:g}, BATCH_MAX_WAIT_MS {settings.batch_max_wait_ms:g}")  # fmt: skip
    print("| run | RTF (median) | all runs |\n|---|---|---|")
    print(f"| direct transcribe(), batch {args.batch} | {statistics.median(direct):.3f} | "
          f"{', '.join(f'{r:.3f}' for r in direct)} |")  # fmt: skip
    print(f"| service, {args.concurrency} concurrent requests, MAX_BATCH_SIZE {args.batch} | "
          f"{statistics.median(service):.3f} | {', '.join(f'{r:.3f}' for r in service)} |")  # fmt: skip
    print(f"batches the service ran per round: {batches} (at least {-(-args.concurrency // args.batch)})")
    print(f"service / direct per pair: {', '.join(f'{r:.0%}' for r in ratios)}; median "
          f"{statistics.median(ratios):.0%} (target <= 110%)")  # fmt: skip


# ------------------------------------------------------------------------------------------- drift
@contextlib.contextmanager
def _all_positions(thinker: Any) -> Iterator[None]:
    """Lift BOUND_PREFILL_MEMORY's last-position hook on the LM head for a teacher-forced forward."""
    hooks = dict(thinker.lm_head._forward_pre_hooks)
    thinker.lm_head._forward_pre_hooks.clear()
    try:
        yield
    finally:
        thinker.lm_head._forward_pre_hooks.update(hooks)


def _untied(engine: TransformersEngine, *, quantize: bool) -> TransformersEngine:
    """Give the LM head its own random weights (same seed in both engines), then quantize like the engine does.
    With the checkpoint's tied head, the logits are mostly the current token's similarity to itself and greedy
    output repeats one token: agreement is then trivially 100%. An untied random head gives varied tokens with
    the close top-1 margins of random logits: a pessimistic stand-in (trained models decide more clearly)."""
    import torch

    from asr_server.engines.quantization import quantize_model
    from asr_server.engines.transformers_engine import _last_position_only

    model = engine._model.model
    head = model.thinker.lm_head
    generator = torch.Generator().manual_seed(1234)
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape, generator=generator) * 0.02)
    if quantize:
        quantize_model(model, "int8", "cpu")
        model.thinker.lm_head.register_forward_pre_hook(_last_position_only)  # the new head needs the bound too
    return engine


def part_drift(args: argparse.Namespace) -> None:
    import torch

    fp32 = _loaded(TransformersEngine(_settings(args, "fp32")), args.tokens)
    if args.untied_head:
        int8 = _untied(_loaded(TransformersEngine(_settings(args, "fp32")), args.tokens), quantize=True)
        _untied(fp32, quantize=False)
    else:
        int8 = _loaded(TransformersEngine(_settings(args, "int8")), args.tokens)
    asr = fp32._model
    prompt = asr._build_text_prompt(context="", force_language=None)
    total = equal = whole = forced_equal = self_equal = 0
    errors: list[float] = []
    distinct: set[int] = set()
    for i, clip in enumerate(noise_clips(args.clips, args.clip_seconds, seed=10)):
        inputs = asr.processor(text=[prompt], audio=[clip], return_tensors="pt", padding=True)
        start = inputs["input_ids"].shape[1]
        with torch.no_grad():
            ref = fp32._model.model.generate(**inputs, max_new_tokens=args.tokens).sequences
            out = int8._model.model.generate(**inputs, max_new_tokens=args.tokens).sequences
            a, b = ref[0, start:], out[0, start:]
            total, equal, whole = total + len(a), equal + int((a == b).sum()), whole + int(torch.equal(a, b))
            distinct.update(a.tolist())
            forced = {**inputs, "input_ids": ref, "attention_mask": torch.ones_like(ref)}
            logits = {}
            for name, engine in (("int8", int8), ("fp32", fp32)):
                thinker = engine._model.model.thinker
                with _all_positions(thinker):
                    logits[name] = thinker(**forced).logits[0, start - 1 : -1]
            forced_equal += int((logits["int8"].argmax(-1) == a).sum())
            self_equal += int((logits["fp32"].argmax(-1) == a).sum())
            diff = (logits["int8"] - logits["fp32"]).norm(dim=-1) / logits["fp32"].norm(dim=-1)
            errors.extend(diff.tolist())
        print(f"clip {i}: {int((a == b).sum())}/{len(a)} positions equal", file=sys.stderr)
    print(f"dims {args.dims}, {args.clips} clips of {args.clip_seconds:g} s, {args.tokens} greedy tokens each "
          f"(random weights: a stand-in for drift; {len(distinct)} distinct tokens in the fp32 outputs)")  # fmt: skip
    print("| measure | int8 vs fp32 |\n|---|---|")
    print(f"| whole sequences identical | {whole}/{args.clips} |")
    print(f"| positions equal (free-running greedy) | {equal}/{total} = {equal / total:.1%} |")
    print(f"| teacher-forced top-1 agreement | {forced_equal}/{total} = {forced_equal / total:.1%} |")
    print(f"| fp32 teacher-forced vs its own greedy (method check) | {self_equal}/{total} = {self_equal / total:.1%} |")
    print(f"| relative logit error per step, median / max | {statistics.median(errors):.2%} / {max(errors):.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["memory", "speed", "service", "drift"], default="speed")
    parser.add_argument("--dims", default="0.6b", choices=["tiny", "0.6b", "1.7b"])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the per-mode table on a GPU")
    parser.add_argument("--modes", default=None, help="comma-separated: fp32, bf16, int8")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="service: BATCH_WAIT_MS")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--untied-head", action="store_true", help="drift: varied tokens (see _untied)")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        print(json.dumps(memory_case(args, args.memory_case)))
        return
    args.modes = args.modes or ("fp32,bf16,int8" if args.part == "memory" else "fp32,int8")
    {"memory": part_memory, "speed": part_speed, "service": part_service, "drift": part_drift}[args.part](args)


if __name__ == "__main__":
    main()

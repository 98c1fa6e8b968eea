"""Speculative decoding vs plain greedy decoding at the real model dimensions, random weights, CPU or GPU.

Random weights cannot say how often a real 0.6B agrees with a real 1.7B (the acceptance rate α), so
this measures what does not depend on the weights' values, in one process (paired):

1. end to end, one clip, exactly `--tokens` new tokens: the target alone, then speculative decoding
   with a random draft (α ≈ 0: the worst case, every proposal wasted) for each k; the outputs must be
   token-for-token identical;
2. the cost of each piece: a target decoding step, a target verification pass over k+1 tokens, a draft
   step, each model's prefill;
3. from those, the decoding speed-up at a given α: E·t_step / (k·d_step + t_verify), where
   E = (1 − α^(k+1)) / (1 − α) tokens per round (the draft's own prefill comes on top, once per clip).

    .venv/bin/python bench/speculative.py --target 1.7b --draft 0.6b [--clip-seconds 10] [--tokens 40]
        [--k 2,4] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr_server.engines.speculative import SpeculativeGenerator, _extend, _prefill
from asr_server.engines.vllm_engine import build_prompt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_tiny_checkpoint as mtc  # noqa: E402 - the script is not a package


def random_model(dims: str, seed: int, device: str) -> Any:
    """A random Qwen3-ASR of the published `dims`, built in memory (no fp32-from-bf16 loading peak)."""
    return mtc._new_model(mtc._config(dims, aligner=False), dtype=torch.float32, seed=seed, tiny=False).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn: Any, device: str, repeat: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _step_costs(model: Any, inputs: dict[str, Any], sizes: list[int], device: str) -> dict[int, float]:
    """Seconds for one cached forward pass over n new tokens, for each n in `sizes`."""
    ids = inputs["input_ids"]
    cache, _ = _prefill(model, ids, inputs["input_features"], inputs["feature_attention_mask"])
    start = ids.shape[1]
    costs = {}
    for n in sizes:

        def step(n: int = n) -> None:
            _extend(model, cache, [100] * n, start)
            cache.crop(start)

        costs[n] = _time(step, device)
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="1.7b", choices=["tiny", "0.6b", "1.7b"])
    parser.add_argument("--draft", default="0.6b", choices=["tiny", "0.6b", "1.7b"])
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--k", default="2,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.k.split(",")]
    started = time.perf_counter()
    target = random_model(args.target, 0, args.device)
    draft = random_model(args.draft, 1, args.device)
    print(f"built target {args.target} and draft {args.draft} in {time.perf_counter() - started:.0f} s")
    processor = mtc._build_processor()
    clip = (0.1 * np.random.default_rng(0).standard_normal(int(args.clip_seconds * 16_000))).astype(np.float32)
    inputs = processor(text=[build_prompt("", None)], audio=[clip], return_tensors="pt", padding=True)
    inputs = inputs.to(args.device)
    prompt_len = inputs["input_ids"].shape[1]

    with torch.no_grad():
        _sync(args.device)
        t0 = time.perf_counter()
        plain = target.generate(**inputs, max_new_tokens=args.tokens).sequences
        _sync(args.device)
        plain_s = time.perf_counter() - t0
        if plain.shape[1] - prompt_len != args.tokens:
            print("the random target stopped early; pick another --tokens")
        print(f"\n{args.clip_seconds:g} s clip ({prompt_len} prompt tokens), {args.tokens} new tokens, {args.device}")
        print("| decoder | wall s | tokens/s | target passes | acceptance | identical |")
        print("|---|---|---|---|---|---|")
        print(f"| {args.target} alone | {plain_s:.1f} | {args.tokens / plain_s:.2f} | {args.tokens} | — | — |")
        for k in ks:
            spec = SpeculativeGenerator(target, draft, k)
            _sync(args.device)
            t0 = time.perf_counter()
            out = spec.generate(**inputs, max_new_tokens=args.tokens).sequences
            _sync(args.device)
            spec_s = time.perf_counter() - t0
            st = spec.stats()
            print(
                f"| speculative, {args.draft} draft, k={k} | {spec_s:.1f} | {args.tokens / spec_s:.2f} | "
                f"{st.target_passes} | {st.acceptance_rate:.2f} | {torch.equal(out, plain)} |"
            )

        t_cost = _step_costs(target, inputs, [1, *(k + 1 for k in ks)], args.device)
        d_cost = _step_costs(draft, inputs, [1], args.device)
        feats = (inputs["input_ids"], inputs["input_features"], inputs["feature_attention_mask"])
        t_prefill = _time(lambda: _prefill(target, *feats), args.device, repeat=1)
        d_prefill = _time(lambda: _prefill(draft, *feats), args.device, repeat=1)
    print("\n| piece | ms |\n|---|---|")
    print(f"| target prefill (encoder + prompt) | {t_prefill * 1000:.0f} |")
    print(f"| draft prefill | {d_prefill * 1000:.0f} |")
    print(f"| target step, 1 token | {t_cost[1] * 1000:.0f} |")
    for k in ks:
        print(f"| target verification pass, {k + 1} tokens | {t_cost[k + 1] * 1000:.0f} |")
    print(f"| draft step, 1 token | {d_cost[1] * 1000:.0f} |")
    alphas = [0.5, 0.7, 0.8, 0.9, 0.95]
    print("\nprojected decoding speed-up (excluding the draft prefill):")
    print("| k | " + " | ".join(f"α={a}" for a in alphas) + " |\n|---|" + "---|" * len(alphas))
    for k in ks:
        cells = []
        for a in alphas:
            expected = (1 - a ** (k + 1)) / (1 - a)
            cells.append(f"{expected * t_cost[1] / (k * d_cost[1] + t_cost[k + 1]):.2f}×")
        print(f"| {k} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Forced-aligner time per minute of audio at the published aligner's dimensions (random weights), on CPU.

Accurate subtitles run Qwen3-ForcedAligner over each chunk of at most 180 s after transcription; this is
that step alone, through the engine's `align()`. The aligner is not autoregressive (one forward pass per
chunk), so random weights cost the same as trained ones. English text at 2.5 words per second of audio.

    .venv/bin/python bench/aligner.py [--dims 0.6b] [--seconds 30,60,180] [--repeats 2] [--dtype auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import bench_checkpoint

from asr_server.config import Settings
from asr_server.engines.base import AlignItem
from asr_server.engines.transformers_engine import TransformersEngine

WORDS_PER_SECOND = 2.5
VOCABULARY = [
    *("the", "a", "small", "river", "runs", "past", "old", "stone", "houses"),
    *("while", "people", "talk", "about", "weather", "and", "work"),
]


def _item(seconds: float, seed: int) -> AlignItem:
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
    words = rng.choice(VOCABULARY, size=int(seconds * WORDS_PER_SECOND))
    return AlignItem(audio=audio, text=" ".join(words), language="English")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="0.6b", choices=["tiny", "0.6b"])
    parser.add_argument("--seconds", default="30,60,180", help="comma-separated clip lengths (the pipeline's max: 180)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = parser.parse_args()
    aligner = bench_checkpoint(f"qwen3-forced-aligner-{args.dims}-random", "--aligner", "--dims", args.dims)
    engine = TransformersEngine(
        Settings(model_id="unused", forced_aligner_id=str(aligner), device="cpu", dtype=args.dtype, log_level="WARNING")
    )
    started = time.perf_counter()
    engine.align([_item(2.0, seed=0)])  # loads the aligner, warms up
    print(f"aligner {args.dims} loaded and warmed up in {time.perf_counter() - started:.1f} s")
    print("| clip | words | align time (median) | runs | seconds per minute of audio |\n|---|---|---|---|---|")
    for seconds in (float(s) for s in args.seconds.split(",")):
        item = _item(seconds, seed=int(seconds))
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            units = engine.align([item])[0]
            runs.append(time.perf_counter() - started)
        median = statistics.median(runs)
        print(f"| {seconds:g} s | {len(units)} | {median:.2f} s | {', '.join(f'{r:.2f}' for r in runs)} | "
              f"{median / seconds * 60:.2f} s |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

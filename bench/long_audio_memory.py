"""Peak memory of the prefill for long audio: stock, LM head bounded, and both BOUND_PREFILL_MEMORY bounds.

Two terms grow with the audio: the LM head over every prompt position (prompt tokens × 151,936 floats,
although generation reads only the last row), and the audio encoder's first convolution + GELU over up
to 500 one-second chunks at once (480 channels at the real dimensions: ~6 MB per second of audio, each).
Each case runs in a fresh process (so one case's freed memory cannot hide the next one's peak): a random
Qwen3-ASR of `--dims` with the real vocabulary is built, one clip of N seconds is prepared, and
`generate(max_new_tokens=1)` (prefill + one token) runs while a thread samples the resident set every
millisecond. Reported: peak RSS above the RSS just before the call. The tiny model (8 conv channels)
shows the logits term alone; `--dims 0.6b` shows both.

    .venv/bin/python bench/long_audio_memory.py [--dims tiny] [--seconds 60,200,600] [--unbounded-max 600]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import peak_rss, rss_mb

ROOT = Path(__file__).resolve().parents[1]


def run_case(dims: str, seconds: float, mode: str, threads: int) -> dict[str, float]:
    """One measurement, in this process."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    import make_tiny_checkpoint as mtc

    from asr_server.engines.transformers_engine import _bound_encoder_convolutions, _last_position_only
    from asr_server.engines.vllm_engine import build_prompt

    torch.set_num_threads(threads)
    model = mtc._new_model(mtc._config(dims, aligner=False), dtype=torch.float32, seed=0, tiny=dims == "tiny")
    if mode in ("logits", "both"):  # what the engine installs with BOUND_PREFILL_MEMORY=1
        model.thinker.lm_head.register_forward_pre_hook(_last_position_only)
    if mode == "both":
        _bound_encoder_convolutions(model)
    clip = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16_000))).astype(np.float32)
    inputs = mtc._build_processor()(text=[build_prompt("", None)], audio=[clip], return_tensors="pt", padding=True)
    before = rss_mb()
    with peak_rss() as peak, torch.no_grad():
        started = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1)
        elapsed = time.perf_counter() - started
    return {"prompt_tokens": int(inputs["input_ids"].shape[1]), "peak_mb": peak[0] - before, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", choices=["tiny", "0.6b", "1.7b"], default="tiny")
    parser.add_argument("--seconds", default="60,200,600", help="clip lengths")
    parser.add_argument("--unbounded-max", type=float, default=600, help="longest clip run without the bound")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="none,logits,both", help="none (stock), logits, both")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # "SECONDS,MODE": run one case, print JSON
    args = parser.parse_args()
    if args.case:
        seconds, mode = args.case.split(",")
        print(json.dumps(run_case(args.dims, float(seconds), mode, args.threads)))
        return 0
    modes = args.modes.split(",")
    names = {"none": "stock", "logits": "LM head bounded", "both": "BOUND_PREFILL_MEMORY (both)"}
    print(f"dims {args.dims}, fp32, {args.threads} threads; peak RSS above the pre-call RSS, fresh process per case")
    print("| audio | prompt tokens | " + " | ".join(names[m] for m in modes) + " | calculated logits |")
    print("|---|---|" + "---|" * len(modes) + "---|")
    for seconds in (float(s) for s in args.seconds.split(",")):
        cells: dict[str, str] = {}
        tokens = 0
        for mode in modes:
            if mode == "none" and seconds > args.unbounded_max:
                cells[mode] = "not run"
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--dims", args.dims, "--threads", str(args.threads), "--case",
                 f"{seconds},{mode}"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            case = json.loads(out.strip().splitlines()[-1])
            tokens = case["prompt_tokens"]
            cells[mode] = f"{case['peak_mb']:.0f} MB ({case['seconds']:.1f} s)"
        logits_mb = tokens * 151_936 * 4 / 2**20
        print(f"| {seconds:g} s | {tokens} | " + " | ".join(cells[m] for m in modes) + f" | {logits_mb:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Random-weight Qwen3-ASR checkpoints for the benchmarks: built once by scripts/make_tiny_checkpoint.py
(no model hub needed) and cached under .cache/bench/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_checkpoint(name: str, *script_args: str) -> Path:
    """The cached checkpoint `name`, built with `script_args` (e.g. `--dims 0.6b`, `--hello`) if missing."""
    target = ROOT / ".cache" / "bench" / name
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        script = ROOT / "scripts" / "make_tiny_checkpoint.py"
        subprocess.run([sys.executable, str(script), str(target), *script_args], check=True)
    return target

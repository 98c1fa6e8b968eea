"""Settings: environment names, .env, list parsing, and the GPU-sized batch default."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from asr_server.config import Settings
from asr_server.engines import for_this_machine, hardware
from asr_server.engines.hardware import default_batch_size

GIB = 1024**3


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MODEL_ID=/models/from-dotenv\nQUEUE_MAX=7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUEUE_MAX", "9")  # the environment wins over .env
    monkeypatch.setenv("API_KEYS", " key-one , key-two,,key-three ")
    settings = Settings()
    assert settings.model_id == "/models/from-dotenv" and settings.queue_max == 9
    assert [k.get_secret_value() for k in settings.api_keys] == ["key-one", "key-two", "key-three"]
    assert "key-one" not in repr(settings)  # secrets never print


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError):
        Settings(max_batch_size=0)
    with pytest.raises(ValueError):
        Settings(log_level="LOUD")


def test_batch_size_grows_with_free_gpu_memory_within_bounds() -> None:
    sizes = [default_batch_size(gib * GIB, "Qwen/Qwen3-ASR-1.7B") for gib in (2, 8, 16, 40, 80)]
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[-1] == 32
    assert default_batch_size(8 * GIB, "Qwen/Qwen3-ASR-0.6B") > default_batch_size(8 * GIB, "Qwen/Qwen3-ASR-1.7B")


def test_gpu_default_applies_only_when_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "free_gpu_bytes", lambda: 24 * GIB)  # the hardware probe, not the logic
    on_gpu = for_this_machine(Settings(model_id="Qwen/Qwen3-ASR-1.7B"))
    assert on_gpu.max_batch_size == default_batch_size(24 * GIB, "1.7B")
    assert for_this_machine(Settings(model_id="Qwen/Qwen3-ASR-1.7B", max_batch_size=3)).max_batch_size == 3
    assert for_this_machine(Settings(device="cpu")).max_batch_size == 8
    assert for_this_machine(Settings()).model_id == "Qwen/Qwen3-ASR-1.7B"  # a GPU with room: the large model
    assert for_this_machine(Settings()).align_chunk_seconds == 180.0


def test_settings_are_a_pure_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building Settings asks no hardware: nvidia-smi runs only in engines.hardware.for_this_machine."""
    import subprocess

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"Settings ran a subprocess: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")  # as if nvidia-smi were installed
    settings = Settings(device="cuda", asr_engine="transformers")
    assert settings.model_id is None or settings.model_id == ""
    assert settings.resolved_align_chunk_seconds() == 180.0


def test_align_chunk_seconds_follows_where_the_model_runs() -> None:
    assert Settings(device="cpu").resolved_align_chunk_seconds() == 60.0
    assert Settings(device="cuda:0").resolved_align_chunk_seconds() == 180.0
    assert Settings(device="cuda", align_chunk_seconds=90).resolved_align_chunk_seconds() == 90.0
    with pytest.raises(ValidationError):
        Settings(align_chunk_seconds=181)  # the aligner's own input limit


def test_cpu_dtype_follows_the_cpus_bf16_instructions() -> None:
    from asr_server.engines.hardware import cpu_dtype, cpu_flags

    zen4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
    sapphire_rapids = "flags\t\t: avx2 avx512f amx_bf16 amx_tile\n"
    older = "flags\t\t: fpu sse2 avx avx2 fma\n"
    assert cpu_dtype(cpu_flags(zen4)) == "bfloat16"
    assert cpu_dtype(cpu_flags(sapphire_rapids)) == "bfloat16"
    assert cpu_dtype(cpu_flags(older)) == "float32"
    assert cpu_dtype(cpu_flags("")) == "float32"

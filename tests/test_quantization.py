"""QUANTIZE: each mode loads and transcribes through HTTP where this hardware supports it, and fails at
start, naming what is supported, where it does not."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from asr_server.cli import main as cli_main
from asr_server.config import Settings
from asr_server.engines import create_engine
from asr_server.engines import quantization as quantization_module
from asr_server.engines.quantization import check_quantization, quantize_model, vllm_quantization
from asr_server.engines.transformers_engine import TransformersEngine
from asr_server.errors import EngineUnavailable
from asr_server.server import create_app

from support import encode, noise, running_server

HAS_CUDA = torch.cuda.is_available()
FP8_GPU = HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9)


def _settings(model_dir: Path | str = "/nonexistent", **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "asr_engine": "transformers",
        "model_id": str(model_dir),
        "forced_aligner_id": "",
        "device": "cpu",
        "max_new_tokens": 12,
        "batch_wait_ms": 50,
        "log_level": "WARNING",
    }
    return Settings(**{**base, **overrides})


def _transcribe_burst(url: str, n: int) -> list[httpx.Response]:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            files = [{"file": ("a.wav", encode(noise(1.0 + i, seed=i)))} for i in range(n)]
            return await asyncio.gather(*(http.post("/transcribe", files=f) for f in files))

    return asyncio.run(burst())


# ------------------------------------------------------------------------------- through HTTP
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "int8"])
def test_mode_loads_and_keeps_the_exact_phrase(hello_asr_dir: Path, mode: str) -> None:
    with running_server(create_app(_settings(hello_asr_dir, quantize=mode, preload=True))) as url:
        responses = _transcribe_burst(url, 3)
        ready = httpx.get(f"{url}/ready").json()
    assert [(r.status_code, r.json()["text"]) for r in responses] == [(200, "hello world")] * 3
    if mode == "int8":
        assert ready["path"] == "transformers+int8"
        quantize = ready["quantize"]
        assert (quantize["mode"], quantize["method"]) == ("int8", "torch.ao dynamic int8 (fbgemm)")
        weights = quantize["weight_bytes"]
        assert quantize["layers"] > 0 and 0 < weights["quantized"] < weights["unquantized"]
    else:
        assert ready["path"] == "transformers" and ready["quantize"] == "none"


@pytest.mark.skipif(HAS_CUDA, reason="fp8 may be supported on this GPU")
def test_fp8_without_a_suitable_gpu_fails_at_start(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    for device in ("cpu", "auto"):
        with pytest.raises(EngineUnavailable, match=r"fp8 needs a CUDA GPU with compute capability >= 8\.9") as raised:
            create_app(_settings(quantize="fp8", device=device))
        assert "Supported here: QUANTIZE=int8 or QUANTIZE=none" in raised.value.message
    monkeypatch.setenv("QUANTIZE", "fp8")
    monkeypatch.setenv("ASR_ENGINE", "transformers")
    monkeypatch.setenv("DEVICE", "cpu")
    assert cli_main(["serve"]) == 2
    assert "USE_VLLM=1 (vLLM's own fp8)" in capsys.readouterr().err


# ------------------------------------------------------------------------------- start-up checks
@pytest.mark.parametrize(
    ("overrides", "gpu", "message"),
    [
        ({"quantize": "int8", "dtype": "bfloat16"}, None, "DTYPE=bfloat16 is not supported with it"),
        ({"quantize": "int8", "use_vllm": True}, None, "with USE_VLLM=1 use QUANTIZE=fp8"),
        ({"quantize": "fp8", "device": "cuda"}, (8, 6), "this GPU has compute capability 8.6"),
        ({"quantize": "fp8", "device": "auto"}, (7, 5), "this GPU has compute capability 7.5"),
    ],
)
def test_unsupported_combinations_say_what_is_supported(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], gpu: tuple[int, int] | None, message: str
) -> None:
    monkeypatch.setattr(quantization_module, "_gpu_capability", lambda: gpu)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "torchao" else real(name, *a))
    monkeypatch.setattr(quantization_module.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if gpu else None)
    with pytest.raises(EngineUnavailable, match=message):
        check_quantization(_settings(**overrides))


def test_supported_combinations_pass_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantization_module, "_gpu_capability", lambda: (9, 0))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "torchao" else real(name, *a))
    check_quantization(_settings(quantize="int8"))  # CPU: torch.ao, nothing to install
    check_quantization(_settings(quantize="fp8", device="cuda"))  # Hopper
    check_quantization(_settings(quantize="int8", device="cuda"))
    check_quantization(_settings(quantize="fp8", use_vllm=True))  # vLLM's own fp8
    check_quantization(_settings(quantize="fp8", asr_engine="fake"))  # nothing to quantize
    assert vllm_quantization(_settings(quantize="fp8", use_vllm=True)) == "fp8"
    assert vllm_quantization(_settings(quantize="none", use_vllm=True)) is None


def test_int8_on_a_gpu_without_torchao_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(EngineUnavailable, match=r"needs torchao: the extra .quantize.") as raised:
        create_engine(_settings(quantize="int8", device="cuda"))
    assert raised.value.code == "missing_dependency"


# ------------------------------------------------------------------------------- what int8 does
@pytest.mark.slow
def test_int8_replaces_the_decoder_in_place_and_shrinks_its_weights(tiny_asr_dir: Path) -> None:
    from torch.ao.nn.quantized import Embedding as QuantizedEmbedding
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    engine = TransformersEngine(_settings(tiny_asr_dir, quantize="int8"))
    engine.load()
    try:
        thinker = engine._model.model.thinker
        layer = thinker.model.layers[0]
        assert isinstance(layer.self_attn.q_proj, DynamicLinear) and isinstance(layer.mlp.down_proj, DynamicLinear)
        assert isinstance(thinker.lm_head, DynamicLinear) and isinstance(thinker.model.embed_tokens, QuantizedEmbedding)
        assert type(thinker.audio_tower.layers[0].fc1) is torch.nn.Linear  # the encoder stays float32
        result = engine._quantized
        assert result.weight_bytes_after < 0.4 * result.weight_bytes_before
        assert not any(type(m) is torch.nn.Linear for m in thinker.model.modules())  # no float copy left behind
        assert engine.describe()["path"] == "transformers+int8"
    finally:
        engine.unload()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_the_cuda_int8_path_keeps_the_phrase_on_this_cpu(hello_asr_dir: Path) -> None:
    """torchao's int8 weight-only (the CUDA path) also runs on CPU: the calls and the selection are right."""
    from qwen_asr import Qwen3ASRModel

    asr = Qwen3ASRModel.from_pretrained(str(hello_asr_dir), dtype=torch.float32, device_map="cpu", max_new_tokens=12)
    thinker = asr.model.thinker
    decoder_linears = sum(type(m) is torch.nn.Linear for m in thinker.model.modules()) + 1  # + LM head
    count = quantization_module._torchao_weight_only(torch, thinker, "int8", encoder=False)
    assert count == decoder_linears
    assert type(thinker.model.layers[0].mlp.up_proj.weight).__name__ != "Parameter"  # a torchao tensor now
    result = asr.transcribe(audio=[(noise(3.0, seed=4), 16_000)])
    assert (result[0].language, result[0].text) == ("English", "hello world")


# ------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_gpu_modes_keep_the_exact_phrase(hello_asr_dir: Path, mode: str) -> None:
    if mode == "fp8" and not FP8_GPU:
        pytest.skip("fp8 needs compute capability >= 8.9")
    settings = _settings(hello_asr_dir, quantize=mode, device="cuda", preload=True, gpu_memory_limit_gb=4)
    with running_server(create_app(settings)) as url:
        responses = _transcribe_burst(url, 4)
        ready = httpx.get(f"{url}/ready").json()
    assert [r.json()["text"] for r in responses] == ["hello world"] * 4
    assert ready["quantize"]["mode"] == mode and ready["memory_plan"]["piece_seconds"] >= 10


def test_quantize_none_is_a_no_op() -> None:
    assert quantize_model(object(), "none", "cpu") is None

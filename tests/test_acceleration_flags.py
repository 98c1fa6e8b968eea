"""Each acceleration flag starts the service on its path, or stops the start with the extra to install."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from asr_server.cli import main as cli_main
from asr_server.config import Settings
from asr_server.engines import TranscribeItem, create_engine
from asr_server.engines.transformers_engine import TransformersEngine
from asr_server.engines.vllm_engine import VllmEngine, build_prompt, parse_asr_output
from asr_server.errors import EngineUnavailable
from asr_server.server import create_app

from support import encode, noise, running_server

HAS_CUDA = torch.cuda.is_available()


def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"asr_engine": "transformers", "model_id": "/nonexistent", "log_level": "WARNING"}
    return Settings(**{**base, **overrides})


# ------------------------------------------------------------------------------- failing at start
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_use_vllm_without_vllm_stops_the_start(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    with pytest.raises(EngineUnavailable, match=r"'vllm' extra: pip install 'qwen3-asr-server\[vllm\]'"):
        create_app(_settings(use_vllm=True))
    monkeypatch.setenv("USE_VLLM", "1")
    monkeypatch.setenv("ASR_ENGINE", "transformers")
    assert cli_main(["serve"]) == 2
    assert "USE_VLLM=1 needs the 'vllm' extra" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_vllm": True, "use_speculative": True}, "USE_SPECULATIVE apply to the transformers engine"),
        ({"use_speculative": True}, "needs FAST_MODEL_ID"),
        ({"onnx_encoder_path": "/nonexistent/encoder"}, "no exported encoder there"),
        ({"attn_implementation": "flash_attention_2", "device": "cpu"}, "needs a CUDA device"),
    ],
)
def test_bad_combinations_stop_the_start(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(EngineUnavailable, match=message):
        create_engine(_settings(**overrides))


@pytest.mark.parametrize(
    ("overrides", "missing", "extra"),
    [
        ({"onnx_encoder_path": "."}, "onnxruntime", "onnx"),
        ({"trt_encoder_path": "."}, "tensorrt", "gpu"),
        ({"attn_implementation": "flash_attention_2", "device": "cuda"}, "flash_attn", "gpu"),
    ],
)
def test_missing_packages_name_their_extra(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], missing: str, extra: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    with pytest.raises(EngineUnavailable, match=rf"needs the '{extra}' extra"):
        create_engine(_settings(**overrides))


# ------------------------------------------------------------------------------- vLLM engine logic
class _StubAsyncLLM:
    """Stands in for vLLM's AsyncLLM: answers after a delay and records how many requests overlap. Like vLLM,
    its output has the generated token ids (end-of-sequence included) and, only when the sampling parameters
    ask for `logprobs`, one {token id: Logprob} per position."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.in_flight = 0
        self.most_in_flight = 0
        self.requests: list[dict[str, Any]] = []
        self.shut_down = False

    async def generate(self, request: dict[str, Any], sampling: Any, request_id: str) -> AsyncIterator[Any]:
        self.requests.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.3)
            audio, rate = request["multi_modal_data"]["audio"]
            forced = request["prompt"].endswith("<asr_text>")
            text = f"{len(audio) // rate} seconds" if forced else f"language English<asr_text>{len(audio) // rate} s"
            ids = [*self.tokenizer.encode(text), self.tokenizer.eos_token_id]
            logprobs = None
            if sampling.get("logprobs") is not None:
                logprobs = [{t: SimpleNamespace(logprob=-0.01 * (i + 1))} for i, t in enumerate(ids)]
            output = SimpleNamespace(text=text, token_ids=ids, logprobs=logprobs)
            yield SimpleNamespace(outputs=[output], finished=True)
        finally:
            self.in_flight -= 1

    async def get_tokenizer(self) -> Any:
        return self.tokenizer

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.fixture(scope="module")
def checkpoint_tokenizer(hello_asr_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hello_asr_dir)


@pytest.fixture
def stub_vllm(checkpoint_tokenizer: Any) -> Iterator[tuple[str, _StubAsyncLLM]]:
    stub = _StubAsyncLLM(checkpoint_tokenizer)
    settings = _settings(use_vllm=True, max_batch_size=4, vllm_max_num_seqs=16, batch_wait_ms=5, preload=True)
    engine = VllmEngine(settings, engine_factory=lambda: stub)
    with running_server(create_app(settings, engine=engine)) as url:
        yield url, stub
    assert stub.shut_down


def test_vllm_engine_keeps_several_batches_in_flight(stub_vllm: tuple[str, _StubAsyncLLM]) -> None:
    url, stub = stub_vllm

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await asyncio.gather(
                *(http.post("/transcribe", files={"file": ("a.wav", encode(noise(1.0 + i % 3)))}) for i in range(16))
            )

    started = time.monotonic()
    responses = asyncio.run(burst())
    assert [r.json()["text"] for r in responses] == [f"{1 + i % 3} s" for i in range(16)]
    assert responses[0].json()["language"] == "english"
    # 16 requests in batches of at most 4: all four batches were inside vLLM together, not one after another.
    assert stub.most_in_flight > 4
    assert time.monotonic() - started < 4 * 0.3 + 1.0
    ready = httpx.get(f"{url}/ready").json()
    assert ready["engine"] == "vllm" and ready["path"] == "vllm" and ready["batches_in_flight"] == 4


def test_vllm_engine_forced_language_and_prompt(checkpoint_tokenizer: Any) -> None:
    stub = _StubAsyncLLM(checkpoint_tokenizer)
    engine = VllmEngine(_settings(use_vllm=True), engine_factory=lambda: stub)
    engine.load()
    try:
        audio = np.zeros(32_000, np.float32)
        results = engine.transcribe([TranscribeItem(audio, "english", "names: Ada"), TranscribeItem(audio)])
    finally:
        engine.unload()
    assert [(r.language, r.text) for r in results] == [("English", "2 seconds"), ("English", "2 s")]
    assert stub.requests[0]["prompt"] == build_prompt("names: Ada", "English")
    # Tokens: the text only (no "language English<asr_text>" prefix, no end-of-sequence), each with its score.
    for result in results:
        assert checkpoint_tokenizer.decode(list(result.tokens)) == result.text
        assert b"".join(result.token_bytes).decode() == result.text
        assert len(result.logprobs) == len(result.tokens) and all(lp < 0 for lp in result.logprobs)
    forced_ids = checkpoint_tokenizer.encode("2 seconds")
    assert results[0].logprobs == pytest.approx([-0.01 * (i + 1) for i in range(len(forced_ids))])
    prefix = len(checkpoint_tokenizer.encode("language English<asr_text>"))
    assert results[1].logprobs[0] == pytest.approx(-0.01 * (prefix + 1))
    assert stub.requests[0]["multi_modal_data"]["audio"][1] == 16_000


@pytest.mark.slow
def test_prompt_matches_qwen_asr(tiny_asr_dir: Path) -> None:
    from qwen_asr import Qwen3ASRModel

    asr = Qwen3ASRModel.from_pretrained(str(tiny_asr_dir), dtype=torch.float32, device_map="cpu")
    for context, language in (("", None), ("Glossary: Qwen, vLLM", "Chinese"), ("a\nb", "English")):
        assert build_prompt(context, language) == asr._build_text_prompt(context=context, force_language=language)


def test_output_parsing_matches_qwen_asr() -> None:
    from qwen_asr.inference.utils import parse_asr_output as reference

    rng = random.Random(0)
    samples = [
        "",
        "  ",
        "language English<asr_text>Hello there.",
        "language None<asr_text>",
        "language none<asr_text> stray",
        "language cHINese\n<asr_text>你好",
        "no tag at all",
        "junk\nlanguage Japanese<asr_text>こんにちは<asr_text>again",
        "language English<asr_text>" + "ha" * 40 + " end",
        "a" * 30 + "b",
    ]
    for _ in range(300):
        alphabet = rng.choice(["ab", "abc ", "xyz<>", "言語 "])
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        body = body[:10] + rng.choice(["", "ab" * rng.randint(15, 25), "c" * rng.randint(15, 25)]) + body[10:]
        samples.append(rng.choice(["", "language French<asr_text>", "language \n<asr_text>"]) + body)
    for raw in samples:
        for forced in (None, "German"):
            assert parse_asr_output(raw, forced) == reference(raw, user_language=forced), (raw, forced)


# ------------------------------------------------------------------------------- transformers path
@pytest.mark.slow
def test_default_path_and_the_prefill_memory_bounds(tiny_asr_dir: Path) -> None:
    from qwen_asr import Qwen3ASRModel

    # float32 pinned: it is compared token for token with a float32 reference, and `auto` is bf16 on bf16 CPUs
    engine = TransformersEngine(
        _settings(model_id=str(tiny_asr_dir), device="cpu", dtype="float32", cpu_threads=1, max_new_tokens=10)
    )
    engine.load()
    plain = Qwen3ASRModel.from_pretrained(str(tiny_asr_dir), dtype=torch.float32, device_map="cpu", max_new_tokens=10)
    try:
        described = engine.describe()
        assert described["path"] == "transformers" and described["audio_encoder"] == "pytorch"
        assert described["attn_implementation"] == "sdpa" and described["speculative"] is None
        asr = engine._model
        clips = [noise(2.0, seed=1), noise(5.0, seed=2)]
        inputs = asr.processor(
            text=[asr._build_text_prompt("", None)] * 2, audio=clips, return_tensors="pt", padding=True
        )
        with torch.no_grad():
            logits = asr.model.thinker(**inputs).logits
        assert logits.shape[1] == 1  # not one row of 151936 logits per prompt position
        assert asr.model.thinker.audio_tower.conv_chunksize == 50  # not 500 one-second chunks at once
        bounded = asr.model.generate(**inputs, max_new_tokens=10).sequences
        assert torch.equal(bounded, plain.model.generate(**inputs, max_new_tokens=10).sequences)
    finally:
        engine.unload()


# ------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or importlib.util.find_spec("vllm") is None, reason="needs vllm and a CUDA GPU")
def test_vllm_engine_on_a_gpu(hello_asr_dir: Path) -> None:
    engine = create_engine(_settings(use_vllm=True, model_id=str(hello_asr_dir), max_new_tokens=16))
    engine.load()
    try:
        results = engine.transcribe([TranscribeItem(noise(3.0, seed=i)) for i in range(8)])
    finally:
        engine.unload()
    assert [(r.language, r.text) for r in results] == [("English", "hello world")] * 8
    for result in results:  # the real engine's tokens and scores (logprobs=0)
        assert b"".join(result.token_bytes).decode().strip() == "hello world"
        assert len(result.logprobs) == len(result.tokens) > 0 and all(lp <= 0 for lp in result.logprobs)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_transformers_on_a_gpu(hello_asr_dir: Path, attn: str) -> None:
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    settings = _settings(model_id=str(hello_asr_dir), device="cuda", attn_implementation=attn, max_new_tokens=16)
    engine = TransformersEngine(settings)
    engine.load()
    try:
        assert engine.describe()["attn_implementation"] == attn and torch.backends.cuda.matmul.allow_tf32
        assert engine.transcribe([TranscribeItem(noise(3.0))])[0].text == "hello world"
    finally:
        engine.unload()

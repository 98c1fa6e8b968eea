"""Out-of-memory on a batch is retried in halves; a single request that cannot fit gets 503 out_of_memory.
Also the GPU memory plan (GPU_MEMORY_LIMIT_GB): piece length and sub-batches derived from a budget."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import torch

from asr_server.config import Settings
from asr_server.engines import TranscribeItem, Transcript
from asr_server.engines.fake import FakeEngine
from asr_server.engines.hardware import GIB, MemoryPlan, activation_cost, install_memory_plan, physical_cores
from asr_server.engines.oom import RequestTooLarge, halves, is_out_of_memory
from asr_server.errors import EngineUnavailable, InferenceError, ServiceError
from asr_server.server import create_app

from support import encode, noise, running_server


class TightEngine(FakeEngine):
    """Runs out of memory on batches larger than `fits`, and on any batch holding the context "huge"."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.fits = fits

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        if len(items) > self.fits or any(item.context == "huge" for item in items):
            self.batches.append(-len(items))  # negative: this batch ran out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().transcribe(items)


async def _burst(url: str, contexts: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        return await asyncio.gather(
            *(
                http.post("/transcribe", files={"file": ("a.wav", encode(noise(0.5)))}, data={"prompt": c})
                for c in contexts
            )
        )


def _app(engine: Any, **overrides: Any) -> Any:
    settings = Settings(**{"asr_engine": "fake", "batch_wait_ms": 200, "max_batch_size": 8, **overrides})
    return create_app(settings, engine=engine)


def test_oversized_batch_is_retried_in_halves() -> None:
    engine = TightEngine(fits=2)
    with running_server(_app(engine)) as url:
        responses = asyncio.run(_burst(url, [f"clip {i}" for i in range(8)]))
        assert [r.status_code for r in responses] == [200] * 8
        assert sorted(r.json()["text"] for r in responses) == sorted(f"clip {i}" for i in range(8))
        ready = httpx.get(f"{url}/ready").json()
    assert ready["state"] == "ready"  # the service stays up
    first = engine.batches.index(next(b for b in engine.batches if b < -2))
    # 8 -> 4 + 4 -> 2 + 2 + 2 + 2: every failed batch is split in two, never run one by one.
    assert engine.batches[first:] == [-8, -4, 2, 2, -4, 2, 2]


def test_single_request_that_cannot_fit_gets_503_and_the_rest_succeed() -> None:
    engine = TightEngine(fits=8)
    with running_server(_app(engine)) as url:
        responses = asyncio.run(_burst(url, ["a", "huge", "b", "c"]))
        by_prompt = dict(zip(["a", "huge", "b", "c"], responses, strict=True))
        assert [by_prompt[p].json()["text"] for p in "abc"] == ["a", "b", "c"]
        huge = by_prompt["huge"]
        assert huge.status_code == 503
        assert huge.json()["error"]["code"] == "out_of_memory"
        assert "does not fit" in huge.json()["error"]["message"]
        metrics = httpx.get(f"{url}/metrics").text
    assert 'code="out_of_memory"' in metrics


def test_other_errors_still_fail_only_their_job() -> None:
    class Broken(FakeEngine):
        def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
            if any(item.context == "bad" for item in items):
                raise ValueError("corrupt input")
            return super().transcribe(items)

    with running_server(_app(Broken())) as url:
        responses = asyncio.run(_burst(url, ["ok", "bad"]))
    assert [r.status_code for r in responses] == [200, 500]


class TightBehindGateway(FakeEngine):
    """What the gateway sees in GATEWAY_MODE: the worker process's out-of-memory arrives as a 503 with code
    out_of_memory (RemoteEngine raises EngineUnavailable for a 503)."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.fits = fits

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        if len(items) > self.fits:
            raise EngineUnavailable("out of memory: CUDA out of memory", code="out_of_memory")
        return super().transcribe(items)


def test_the_worker_process_reports_out_of_memory_with_its_code() -> None:
    from asr_server.engines.gateway.process import create_worker_app

    with running_server(create_worker_app(TightEngine(fits=2))) as url:
        files = [("audio", (f"{i}.f32", noise(0.5).astype("<f4").tobytes())) for i in range(4)]
        meta = json.dumps([{"language": None, "context": ""}] * 4)
        response = httpx.post(f"{url}/transcribe", files=files, data={"meta": meta})
    assert response.status_code == 503
    assert response.json()["code"] == "out_of_memory"


def test_out_of_memory_forwarded_from_the_worker_process_is_retried_in_halves() -> None:
    engine = TightBehindGateway(fits=2)
    with running_server(_app(engine)) as url:
        responses = asyncio.run(_burst(url, [f"clip {i}" for i in range(8)]))
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(r.json()["text"] for r in responses) == sorted(f"clip {i}" for i in range(8))


def test_out_of_memory_is_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(InferenceError("OutOfMemoryError", code="out_of_memory"))  # from a worker process
    assert is_out_of_memory(RequestTooLarge("x"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
    assert not is_out_of_memory(ServiceError("boom"))
    assert halves([1, 2, 3]) == ([1], [2, 3])
    assert isinstance(RequestTooLarge("x"), EngineUnavailable) and RequestTooLarge("x").status_code == 503


@pytest.mark.slow
def test_real_engine_batch_out_of_memory_is_retried_at_half_size(hello_asr_dir: Path) -> None:
    """The transformers engine on the trained tiny checkpoint, with generate() made to fail above 2 clips."""
    settings = Settings(
        asr_engine="transformers", model_id=str(hello_asr_dir), forced_aligner_id="", device="cpu",
        max_new_tokens=12, batch_wait_ms=300, max_batch_size=8, log_level="WARNING",
    )  # fmt: skip
    app = create_app(settings)
    engine = app.state.services.worker.engine
    sizes: list[int] = []
    with running_server(app) as url:
        httpx.post(f"{url}/transcribe", files={"file": ("a.wav", encode(noise(1.0)))}, timeout=60)  # loads
        model = engine._model.model
        generate = model.generate

        def tight_generate(**inputs: Any) -> Any:
            sizes.append(int(inputs["input_ids"].shape[0]))
            if sizes[-1] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return generate(**inputs)

        model.generate = tight_generate
        responses = asyncio.run(_burst(url, [""] * 4))
    assert [r.json()["text"] for r in responses] == ["hello world"] * 4
    assert sizes[0] == 4 and sorted(sizes[1:]) == [2, 2]


# ---------------------------------------------------------------------------------- memory plan
def _config_06b() -> Any:
    """Qwen3-ASR-0.6B's published dimensions (the parts the estimate reads)."""
    text = SimpleNamespace(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=128)  # fmt: skip
    audio = SimpleNamespace(d_model=896, encoder_ffn_dim=3584, downsample_hidden_size=480, num_mel_bins=128)
    return SimpleNamespace(thinker_config=SimpleNamespace(text_config=text, audio_config=audio))


def test_memory_plan_cuts_long_audio_and_groups_within_the_budget() -> None:
    cost = activation_cost(_config_06b(), element_bytes=2, new_tokens=512, conv_seconds=50)
    # bf16 KV cache: 2 x 28 layers x 8 heads x 128 x 2 B = 112 KiB per token, ~1.5 MB per audio second.
    assert cost.per_token > 114_000
    roomy = MemoryPlan.for_budget(8 * GIB, cost, max_batch=8)
    tight = MemoryPlan.for_budget(0.5 * GIB, cost, max_batch=8)
    assert roomy.piece_seconds == 1200  # a 20-minute piece fits in 8 GiB...
    assert 10 <= tight.piece_seconds < 300  # ...but in 0.5 GiB it is cut much shorter
    assert cost.batch_bytes([tight.piece_seconds]) <= tight.budget_bytes
    groups = tight.groups([30.0] * 20 + [tight.piece_seconds])
    assert sorted(i for g in groups for i in g) == list(range(21))
    assert groups[0] == [20]  # the longest piece first, alone
    for group in groups:
        assert len(group) <= 8 and cost.batch_bytes([30.0] * len(group)) <= tight.budget_bytes
    with pytest.raises(EngineUnavailable, match="GPU_MEMORY_LIMIT_GB") as raised:
        MemoryPlan.for_budget(0.01 * GIB, cost, max_batch=8)
    assert raised.value.code == "out_of_memory"


@pytest.mark.slow
def test_pieces_are_transcribed_and_joined_like_qwen_asr_chunks(hello_asr_dir: Path) -> None:
    from qwen_asr import Qwen3ASRModel

    asr = Qwen3ASRModel.from_pretrained(str(hello_asr_dir), dtype=torch.float32, device_map="cpu", max_new_tokens=12)
    cost = activation_cost(asr.model.config, element_bytes=4, new_tokens=12, conv_seconds=50)
    plan = MemoryPlan(budget_bytes=cost.batch_bytes([10.0] * 2), piece_seconds=10, max_batch=8, cost=cost)
    calls: list[list[float]] = []  # seconds of the pieces of each call
    original = asr.transcribe
    asr.transcribe = lambda **kw: calls.append([len(a) / rate for a, rate in kw["audio"]]) or original(**kw)
    install_memory_plan(asr, plan)
    results = asr.transcribe(
        audio=[(noise(25.0, seed=1), 16_000), (noise(3.0, seed=2), 16_000)], context="", language=None
    )
    pieces = sum(len(call) for call in calls) - 1  # the 3 s clip is one piece
    assert pieces >= 3 and max(max(call) for call in calls) <= 10  # 25 s in pieces of at most 10 s
    assert len(calls) > 1 and all(cost.batch_bytes(call) <= plan.budget_bytes for call in calls)
    assert [r.text for r in results] == ["hello world" * pieces, "hello world"]  # joined as qwen-asr joins chunks
    assert [r.language for r in results] == ["English", "English"]


def test_physical_cores_is_a_sane_thread_count() -> None:
    import os

    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))

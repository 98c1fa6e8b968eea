"""Speculative decoding gives the target model's own greedy tokens, whatever the draft proposes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from asr_server.config import Settings
from asr_server.engines.speculative import SpeculativeGenerator, check_compatible
from asr_server.server import create_app

from support import encode, noise, running_server

pytestmark = pytest.mark.slow
MAX_NEW = 20


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one torch thread is faster, and far faster when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(model_dir: Path) -> Any:
    from qwen_asr import Qwen3ASRModel

    return Qwen3ASRModel.from_pretrained(str(model_dir), dtype=torch.float32, device_map="cpu", max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def tiny(tiny_asr_dir: Path) -> Any:
    return _load(tiny_asr_dir)


def _perturbed(model: Any, scale: float, seed: int) -> Any:
    """The same model with a little noise on its matrices: it agrees with the original most of the time."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return draft


def _smaller_random(model_dir: Path) -> Any:
    """A different, smaller random decoder (1 layer, hidden 48) with the same tokenizer: it rarely agrees."""
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir))
    text = cfg.thinker_config.text_config
    text.num_hidden_layers, text.hidden_size, text.intermediate_size = 1, 48, 96
    cfg.thinker_config.audio_config.output_dim = 48
    torch.manual_seed(7)
    return Qwen3ASRForConditionalGeneration(cfg).eval()


def _inputs(asr: Any, clips: list[np.ndarray], language: str | None) -> Any:
    prompts = [asr._build_text_prompt(context="", force_language=language) for _ in clips]
    return asr.processor(text=prompts, audio=clips, return_tensors="pt", padding=True)


CLIPS = [noise(1.0, seed=1), noise(3.3, seed=2), noise(9.5, seed=3)]


@pytest.fixture(scope="module")
def drafts(tiny: Any, tiny_asr_dir: Path) -> dict[str, Any]:
    return {
        "identical": tiny.model,  # agrees always
        "perturbed": _perturbed(tiny.model, 0.005, seed=1),  # agrees often, not always
        "unrelated": _smaller_random(tiny_asr_dir),  # rarely agrees
    }


@pytest.mark.parametrize("language", [None, "English", "Chinese"])
def test_token_ids_identical_to_the_target_alone(tiny: Any, drafts: dict[str, Any], language: str | None) -> None:
    target = tiny.model
    inputs = _inputs(tiny, CLIPS, language)
    plain = target.generate(**inputs, max_new_tokens=MAX_NEW).sequences
    rates: dict[str, float] = {}
    for name, draft in drafts.items():
        for k in (1, 4):
            spec = SpeculativeGenerator(target, draft, k)
            out = spec.generate(**inputs, max_new_tokens=MAX_NEW).sequences
            assert torch.equal(out, plain), f"draft {name}, k={k}"
            stats = spec.stats()
            assert stats.emitted == len(CLIPS) * MAX_NEW  # random weights never stop early
            rates[f"{name}/{k}"] = stats.acceptance_rate
            if name == "identical":
                assert stats.tokens_per_target_pass > 1.5
    assert rates["identical/1"] == rates["identical/4"] == 1.0
    assert 0.3 < rates["perturbed/4"] < 0.97  # both accepted and rejected proposals were exercised
    assert rates["unrelated/4"] < 0.2


def test_stops_at_the_end_token_like_the_target(hello_asr_dir: Path, tiny: Any) -> None:
    hello = _load(hello_asr_dir)
    inputs = _inputs(hello, CLIPS[:2], None)
    plain = hello.model.generate(**inputs, max_new_tokens=32).sequences
    for draft in (hello.model, tiny.model):  # agrees always / never
        spec = SpeculativeGenerator(hello.model, draft, 4)
        out = spec.generate(**inputs, max_new_tokens=32).sequences
        assert torch.equal(out, plain)
        new = hello.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert new == ["language English<asr_text>hello world"] * 2


def test_incompatible_drafts_are_refused(tiny: Any, drafts: dict[str, Any]) -> None:
    assert check_compatible(tiny.model, drafts["unrelated"]) is None
    sampled = copy.copy(tiny.model)
    sampled.generation_config = copy.deepcopy(tiny.model.generation_config)
    sampled.generation_config.do_sample = True
    assert "do_sample" in (check_compatible(sampled, tiny.model) or "")


@pytest.fixture(scope="module")
def speculative_url(hello_asr_dir: Path, tiny_asr_dir: Path) -> Iterator[str]:
    settings = Settings(
        asr_engine="transformers",
        model_id=str(hello_asr_dir),
        fast_model_id=str(tiny_asr_dir),
        use_speculative=True,
        speculative_k=3,
        forced_aligner_id="",
        device="cpu",
        cpu_threads=1,
        max_new_tokens=16,
        log_level="WARNING",
        preload=True,
    )
    with running_server(create_app(settings)) as url:
        yield url


def test_the_service_runs_on_the_speculative_path(speculative_url: str) -> None:
    response = httpx.post(
        f"{speculative_url}/transcribe", files={"file": ("a.wav", encode(noise(2.0, seed=4)))}, timeout=120
    )
    assert response.status_code == 200 and response.json()["text"] == "hello world"
    ready = httpx.get(f"{speculative_url}/ready").json()
    assert ready["path"] == "transformers+speculative"
    assert ready["speculative"]["k"] == 3

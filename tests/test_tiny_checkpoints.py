"""The tiny local checkpoints of scripts/make_tiny_checkpoint.py, exercised through qwen-asr's public API."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SR = 16000


def _script():
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", REPO_ROOT / "scripts/make_tiny_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _noise(seconds: float, seed: int, level: float = 0.1) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SR)) * level).astype(np.float32), SR


def _tone(seconds: float, hz: float = 440.0) -> tuple[np.ndarray, int]:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SR


# ------------------------------------------------------------------------------------------------ fast
def test_tokenizer_has_the_real_special_token_ids():
    mod = _script()
    tok = mod.build_tokenizer()
    ids = tok.convert_tokens_to_ids(
        [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|audio_start|>",
            "<|audio_end|>",
            "<|audio_pad|>",
            "<asr_text>",
            "<timestamp>",
        ]
    )
    assert ids == [151643, 151644, 151645, 151669, 151670, 151676, 151704, 151705]
    assert (tok.eos_token_id, tok.pad_token_id) == (151645, 151643)
    assert (tok.audio_token, tok.audio_bos_token, tok.audio_eos_token) == (
        "<|audio_pad|>",
        "<|audio_start|>",
        "<|audio_end|>",
    )
    text = "<|im_start|>assistant\nlanguage English<asr_text>hello world<|im_end|>"
    # <asr_text> is added but not special: it survives skip_special_tokens, which parse_asr_output relies on
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == (
        "assistant\nlanguage English<asr_text>hello world"
    )


def test_bad_arguments_are_refused(tmp_path):
    mod = _script()
    with pytest.raises(ValueError):
        mod.build_asr_checkpoint(tmp_path / "x", dims="0.6b", hello=True)
    with pytest.raises(ValueError):
        mod.build_asr_checkpoint(tmp_path / "x", dims="7b")


# ------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def tiny_model(tiny_asr_dir):
    import torch
    from qwen_asr import Qwen3ASRModel

    return Qwen3ASRModel.from_pretrained(str(tiny_asr_dir), dtype=torch.float32, device_map="cpu", max_new_tokens=12)


@pytest.fixture(scope="module")
def hello_model(hello_asr_dir):
    import torch
    from qwen_asr import Qwen3ASRModel

    return Qwen3ASRModel.from_pretrained(str(hello_asr_dir), dtype=torch.float32, device_map="cpu")


@pytest.fixture(scope="module")
def aligner(tiny_aligner_dir):
    import torch
    from qwen_asr import Qwen3ForcedAligner

    return Qwen3ForcedAligner.from_pretrained(str(tiny_aligner_dir), dtype=torch.float32, device_map="cpu")


@pytest.mark.slow
def test_tiny_checkpoint_files_and_config(tiny_asr_dir, tiny_aligner_dir):
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
        "chat_template.jinja",
    ):
        assert (tiny_asr_dir / name).is_file(), name
    cfg = json.loads((tiny_asr_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_asr"
    assert cfg["thinker_config"]["text_config"]["vocab_size"] == 151936
    assert cfg["thinker_config"]["audio_token_id"] == 151676
    al = json.loads((tiny_aligner_dir / "config.json").read_text())
    assert al["thinker_config"]["model_type"] == "qwen3_forced_aligner"
    assert al["timestamp_token_id"] == 151705


@pytest.mark.slow
def test_tiny_prompt_is_the_one_qwen_asr_expects(tiny_model):
    assert tiny_model._build_text_prompt("ctx", None) == (
        "<|im_start|>system\nctx<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tiny_model._build_text_prompt("", "English").endswith("<|im_start|>assistant\nlanguage English<asr_text>")


@pytest.mark.slow
def test_tiny_transcribes_single_and_batch(tiny_model):
    single = tiny_model.transcribe(_noise(3, seed=1))
    assert len(single) == 1
    assert isinstance(single[0].text, str) and single[0].text.strip()

    clips = [_noise(1, seed=2), _noise(4, seed=3), _tone(2.5)]
    auto = tiny_model.transcribe(clips)
    forced = tiny_model.transcribe(clips, language="English")
    assert len(auto) == len(forced) == 3
    assert all(isinstance(r.text, str) and r.text.strip() for r in auto + forced)
    assert all(r.language == "English" for r in forced)
    assert len({r.text for r in auto + forced}) > 1  # random weights, varied text


@pytest.mark.slow
@pytest.mark.parametrize("language", [None, "English"])
def test_hello_batch_of_different_lengths(hello_model, language):
    clips = [_noise(1, seed=10), _tone(7, hz=300), _noise(35, seed=11, level=0.05)]
    results = hello_model.transcribe(clips, language=language)
    assert [(r.language, r.text) for r in results] == [("English", "hello world")] * 3


@pytest.mark.slow
def test_hello_single_with_context(hello_model):
    (result,) = hello_model.transcribe(_noise(2, seed=12), context="a few words of context")
    assert (result.language, result.text) == ("English", "hello world")


def _check_items(result, words, duration):
    assert [item.text for item in result] == words
    times = [t for item in result for t in (item.start_time, item.end_time)]
    assert all(0.0 <= t <= duration for t in times)
    assert times == sorted(times)


@pytest.mark.slow
def test_aligner_english_and_chinese(aligner):
    wav = _noise(3, seed=20)
    english, chinese = aligner.align(
        audio=[wav, wav], text=["hello world", "你好世界"], language=["English", "Chinese"]
    )
    _check_items(english, ["hello", "world"], 3.0)
    _check_items(chinese, ["你", "好", "世", "界"], 3.0)


@pytest.mark.slow
def test_aligner_japanese_uses_nagisa(aligner):
    (result,) = aligner.align(audio=[_noise(2, seed=21)], text=["こんにちは世界"], language=["Japanese"])
    assert len(result) >= 1
    _check_items(result, [item.text for item in result], 2.0)


@pytest.mark.slow
def test_aligner_korean_if_soynlp_installed(aligner):
    pytest.importorskip("soynlp")
    (result,) = aligner.align(audio=[_noise(2, seed=22)], text=["안녕하세요 세계"], language=["Korean"])
    assert len(result) >= 1
    _check_items(result, [item.text for item in result], 2.0)


@pytest.mark.slow
def test_hello_with_aligner_time_stamps(hello_asr_dir, tiny_aligner_dir):
    import torch
    from qwen_asr import Qwen3ASRModel

    model = Qwen3ASRModel.from_pretrained(
        str(hello_asr_dir),
        dtype=torch.float32,
        device_map="cpu",
        forced_aligner=str(tiny_aligner_dir),
        forced_aligner_kwargs={"dtype": torch.float32, "device_map": "cpu"},
    )
    (result,) = model.transcribe(_noise(3, seed=30), return_time_stamps=True)
    assert (result.language, result.text) == ("English", "hello world")
    _check_items(result.time_stamps, ["hello", "world"], 3.0)

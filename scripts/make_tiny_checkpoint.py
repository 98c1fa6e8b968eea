#!/usr/bin/env python3
"""Build local random-weight Qwen3-ASR / Qwen3-ForcedAligner checkpoints that the real qwen-asr loads.

Nothing is downloaded: the tokenizer, feature extractor, chat template, configuration and weights are all
made here. Usage::

    python scripts/make_tiny_checkpoint.py OUT_DIR [--aligner] [--hello] [--dims tiny|tiny-vllm|0.6b|1.7b] [--seed N]

* default (``--dims tiny``): a ~10 M-parameter fp32 Qwen3-ASR with the real vocabulary size (151936) and the
  real special-token ids, so generation can stop at ``<|im_end|>``; random weights give varied pseudo-words
  and rarely stop, so pass a small ``max_new_tokens``.
* ``--hello``: the tiny model trained for a few seconds (deterministic for a given ``--seed``) to answer
  ``language English<asr_text>hello world<|im_end|>`` for any audio and context, i.e. ``transcribe()`` gives
  ("English", "hello world"); with a forced language X it gives (X, "hello world").
* ``--aligner``: a tiny Qwen3-ForcedAligner; random weights, shaped so every predicted time falls within
  0..``ALIGNER_MAX_TIME`` (0.48 s), ordered; words often share a time (zero-length items).
* ``--dims tiny-vllm``: the tiny design with head_dim 64 (decoder hidden 128), which vLLM's CPU attention
  runs; ``--hello`` works with it too.
* ``--dims 0.6b`` / ``--dims 1.7b``: the real Qwen3-ASR-0.6B / 1.7B dimensions (782 M / 2.04 B parameters,
  tied embeddings as published), random weights, saved in bf16 like the published checkpoints
  (``--dtype fp32`` to change), for benchmarks.

Importable: :func:`build_asr_checkpoint`, :func:`build_aligner_checkpoint`, :func:`build_tokenizer`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside the functions
    import numpy as np
    import torch
    from transformers import Qwen2TokenizerFast

HELLO_LANGUAGE = "English"
HELLO_TEXT = "hello world"
ALIGNER_ACTIVE_CLASSES = 7  # aligner predicts only classes 0..6, i.e. times 0 .. 0.48 s
TIMESTAMP_SEGMENT_MS = 80
ALIGNER_MAX_TIME = (ALIGNER_ACTIVE_CLASSES - 1) * TIMESTAMP_SEGMENT_MS / 1000.0


def _words(text: str) -> list[str]:
    return text.split()


# The published tokenizer's added tokens, ids 151643..151705 (special unless listed in _NOT_SPECIAL).
_ADDED_TOKENS = _words(
    "<|endoftext|> <|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> <|box_end|> "
    "<|quad_start|> <|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> <|image_pad|> <|video_pad|> "
    "<tool_call> </tool_call> <|fim_prefix|> <|fim_middle|> <|fim_suffix|> <|fim_pad|> <|repo_name|> "
    "<|file_sep|> <tool_response> </tool_response> <think> </think> <|audio_start|> <|audio_end|> <tts_pad> "
    "<tts_text_bos> <tts_text_eod> <tts_text_bos_single> <non_speech> <|audio_pad|> "
    + " ".join(f"<blank{i}>" for i in range(1, 28))
    + " <asr_text> <timestamp>"
)
FIRST_ADDED_ID = 151643
TOKEN_IDS = {tok: FIRST_ADDED_ID + i for i, tok in enumerate(_ADDED_TOKENS)}
_NOT_SPECIAL = set(
    _words(
        "<tool_call> </tool_call> <|fim_prefix|> <|fim_middle|> <|fim_suffix|> <|fim_pad|> <|repo_name|> "
        "<|file_sep|> <tool_response> </tool_response> <think> </think> <non_speech> <asr_text> <timestamp>"
    )
)
_ADDITIONAL_SPECIAL = _words(
    "<|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> <|box_end|> <|quad_start|> "
    "<|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> <|image_pad|> <|video_pad|> <|audio_start|> "
    "<|audio_end|> <tts_pad> <tts_text_bos> <tts_text_bos_single> <|audio_pad|>"
)
_EXTRA_SPECIAL = dict(
    zip(
        _words("audio_bos_token audio_eos_token audio_token image_token video_token vision_bos_token vision_eos_token"),
        _words(
            "<|audio_start|> <|audio_end|> <|audio_pad|> <|image_pad|> <|video_pad|> <|vision_start|> <|vision_end|>"
        ),
        strict=True,
    )
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Renders exactly what qwen_asr's _build_text_prompt expects from the published template:
# <|im_start|>system\n{context}<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n
# <|im_start|>assistant\n
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'audio' or 'audio' in part or 'audio_url' in part -%}"
    "{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
SUPPORTED_LANGUAGES = _words(
    "Chinese English Cantonese Arabic German French Spanish Portuguese Indonesian Italian Korean Russian Thai "
    "Vietnamese Japanese Turkish Hindi Malay Dutch Swedish Danish Finnish Polish Czech Filipino Persian Greek "
    "Romanian Hungarian Macedonian"
)
ALIGNER_LANGUAGES = _words("Chinese Cantonese English German Spanish French Italian Portuguese Russian Korean Japanese")

# Audio encoder / text decoder dimensions. 0.6b and 1.7b are the published Qwen3-ASR configs
# (encoder layers, heads, ffn, d_model | decoder hidden, ffn, layers, heads, kv heads, head dim | mrope | tied).
DIMS: dict[str, dict[str, Any]] = {
    "tiny": dict(audio=(2, 2, 64, 32, 8), text=(32, 64, 2, 2, 1, 16), mrope=[4, 2, 2], tied=False),
    # vLLM's CPU attention supports only some head sizes (not 16): the same tiny design with head_dim 64.
    "tiny-vllm": dict(audio=(2, 2, 64, 32, 8), text=(128, 256, 2, 2, 1, 64), mrope=[12, 10, 10], tied=False),
    "0.6b": dict(audio=(18, 14, 3584, 896, 480), text=(1024, 3072, 28, 16, 8, 128), mrope=[24, 20, 20], tied=True),
    "1.7b": dict(audio=(24, 16, 4096, 1024, 480), text=(2048, 6144, 28, 16, 8, 128), mrope=[24, 20, 20], tied=True),
}
ASR_VOCAB_SIZE = 151936
ALIGNER_VOCAB_SIZE = 152064
_TINY_INIT_STD = 0.2  # large init: a random tiny model then emits varied, mostly non-special tokens

_CORPUS = (
    "system user assistant language English<asr_text>hello world. The quick brown fox jumps over the lazy dog. "
    "Speech recognition turns audio into text; subtitles need start and end times. "
    "Hello, world! This is a test of the tiny checkpoint, one two three four five six seven eight nine ten. "
    "Qwen3-ASR transcribes speech in many languages: " + " ".join(SUPPORTED_LANGUAGES) + ". "
    "你好世界，这是一个测试。"
)


def _filler_words(count: int, taken: set[str]) -> list[str]:
    """Deterministic pseudo-words (byte-level form, leading space) that fill the vocabulary's id range."""
    syllables = [c + v for c in "bdfghjklmnprstvwz" for v in "aeiou"]
    words = [f"Ġ{a}{b}" for a in syllables for b in syllables]
    words += [f"Ġ{a}{b}{c}" for a in syllables for b in syllables for c in syllables]
    rng = random.Random(0)
    rng.shuffle(words)
    out = [w for w in words if w not in taken][:count]
    if len(out) < count:
        raise RuntimeError("not enough filler words")
    return out


def build_tokenizer(bpe_vocab: int = 1000) -> Qwen2TokenizerFast:
    """A byte-level BPE tokenizer with Qwen's layout: regular tokens 0..151642, the published added tokens at
    their real ids 151643..151705 (``<asr_text>`` and ``<timestamp>`` added but not special)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.NFC()
    trainer_tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    trainer_tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    spec = json.loads(trainer_tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    fill = _filler_words(FIRST_ADDED_ID - len(vocab), set(vocab))
    vocab.update({w: len(vocab) + i for i, w in enumerate(fill)})
    vocab.update(TOKEN_IDS)  # pinning them in the model vocab keeps the real ids
    assert sorted(vocab.values()) == list(range(len(vocab)))
    spec["model"]["vocab"] = vocab
    flags = dict(single_word=False, lstrip=False, rstrip=False, normalized=False)
    spec["added_tokens"] = [
        {"id": i, "content": t, "special": t not in _NOT_SPECIAL, **flags} for t, i in TOKEN_IDS.items()
    ]
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    backend = Tokenizer.from_str(json.dumps(spec))
    # fmt: off
    return Qwen2TokenizerFast(
        tokenizer_object=backend, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=_ADDITIONAL_SPECIAL, extra_special_tokens=_EXTRA_SPECIAL, model_max_length=131072,
        clean_up_tokenization_spaces=False, errors="replace", add_prefix_space=False, split_special_tokens=False,
    )
    # fmt: on


def _build_processor() -> Any:
    from qwen_asr.core.transformers_backend import Qwen3ASRProcessor
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)  # else the Whisper defaults
    return Qwen3ASRProcessor(feature_extractor=fe, tokenizer=build_tokenizer(), chat_template=CHAT_TEMPLATE)


def _config(dims: str, *, aligner: bool) -> Any:
    from qwen_asr.core.transformers_backend import Qwen3ASRConfig

    d = DIMS[dims]
    layers, heads, ffn, d_model, conv = d["audio"]
    hidden, inter, n_layers, n_heads, kv_heads, head_dim = d["text"]
    # fmt: off
    audio = dict(
        num_mel_bins=128, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=ffn, d_model=d_model,
        downsample_hidden_size=conv, output_dim=hidden, n_window=50, n_window_infer=800, max_source_positions=1500,
        conv_chunksize=500, activation_function="gelu",
    )
    rope = dict(rope_type="default", type="default", interleaved=True, mrope_interleaved=True, mrope_section=d["mrope"])
    text = dict(
        vocab_size=ALIGNER_VOCAB_SIZE if aligner else ASR_VOCAB_SIZE, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        hidden_act="silu", max_position_embeddings=8192 if aligner else 65536, rms_norm_eps=1e-6,
        rope_theta=1000000, rope_scaling=rope, attention_bias=False, tie_word_embeddings=d["tied"] and not aligner,
    )
    thinker: dict[str, Any] = dict(
        audio_config=audio, text_config=text, audio_token_id=TOKEN_IDS["<|audio_pad|>"],
        audio_start_token_id=TOKEN_IDS["<|audio_start|>"], audio_end_token_id=TOKEN_IDS["<|audio_end|>"],
        pad_token_id=TOKEN_IDS["<|endoftext|>"], initializer_range=0.02,
    )
    # fmt: on
    extra: dict[str, Any] = {}
    if aligner:
        thinker.update(model_type="qwen3_forced_aligner", classify_num=5000)
        extra = {"timestamp_token_id": TOKEN_IDS["<timestamp>"], "timestamp_segment_time": TIMESTAMP_SEGMENT_MS}
    langs = ALIGNER_LANGUAGES if aligner else SUPPORTED_LANGUAGES
    archs = ["Qwen3ASRForConditionalGeneration"]
    return Qwen3ASRConfig(thinker_config=thinker, support_languages=list(langs), architectures=archs, **extra)


def _new_model(config: Any, *, dtype: torch.dtype, seed: int, tiny: bool) -> Any:
    import torch
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration

    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = Qwen3ASRForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(old)
    if tiny:  # re-initialise: plain normal weights, large enough for varied random text
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() >= 2:
                    std = _TINY_INIT_STD if "embed" in name or "lm_head" in name else 0.1
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.fill_(1.0)
    return model.eval()


def _save(model: Any, processor: Any, out: Path, *, aligner: bool, dtype: torch.dtype) -> None:
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if aligner:  # save_pretrained writes the sub-config class's model_type; qwen_asr keys on this one
        cfg["thinker_config"]["model_type"] = "qwen3_forced_aligner"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen = {
        "eos_token_id": [TOKEN_IDS["<|endoftext|>"], TOKEN_IDS["<|im_end|>"]],
        "pad_token_id": TOKEN_IDS["<|endoftext|>"],
        "do_sample": False,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


@contextlib.contextmanager
def _staging(out_dir: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir``, renamed to it (replacing it) only if the block succeeds."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{time.time_ns()}"
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_asr_checkpoint(
    out_dir: str | Path, *, dims: str = "tiny", hello: bool = False, seed: int = 0, dtype: str | None = None
) -> Path:
    """Write a Qwen3-ASR checkpoint to ``out_dir`` (replaced if present) and return its path.

    ``dims``: "tiny" (fp32 by default), "0.6b" or "1.7b" (bf16 by default); ``hello`` (tiny only) trains the
    model to answer ``("English", "hello world")`` for any audio; ``dtype``: "fp32" or "bf16".
    """
    import torch

    if dims not in DIMS:
        raise ValueError(f"dims must be one of {sorted(DIMS)}")
    tiny = dims.startswith("tiny")
    if hello and not tiny:
        raise ValueError("--hello needs a tiny --dims")
    save_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype or ("fp32" if tiny else "bf16")]
    with _staging(out_dir) as tmp:
        processor = _build_processor()
        model = _new_model(
            _config(dims, aligner=False), dtype=torch.float32 if tiny else save_dtype, seed=seed, tiny=tiny
        )
        if hello:
            _train_hello(model, processor, seed=seed)
        _save(model, processor, tmp, aligner=False, dtype=save_dtype)
    return Path(out_dir).resolve()


def build_aligner_checkpoint(
    out_dir: str | Path, *, seed: int = 0, dims: str = "tiny", dtype: str | None = None
) -> Path:
    """Write a random Qwen3-ForcedAligner checkpoint to ``out_dir`` and return its path.

    Every predicted timestamp is one of the first ``ALIGNER_ACTIVE_CLASSES`` classes, i.e. within
    0..``ALIGNER_MAX_TIME`` seconds; qwen-asr's own post-processing makes them non-decreasing. ``dims``
    "0.6b" gives the published aligner's dimensions (for timing it; bf16 by default, like the ASR).
    """
    import torch

    if dims not in DIMS:
        raise ValueError(f"dims must be one of {sorted(DIMS)}")
    tiny = dims.startswith("tiny")
    save_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype or ("fp32" if tiny else "bf16")]
    with _staging(out_dir) as tmp:
        model = _new_model(
            _config(dims, aligner=True), dtype=torch.float32 if tiny else save_dtype, seed=seed, tiny=tiny
        )
        _confine_aligner(model)
        _save(model, _build_processor(), tmp, aligner=True, dtype=save_dtype)
    return Path(out_dir).resolve()


def _confine_aligner(model: Any, const: float = 1.0, sharpen: float = 4.0) -> None:
    """Make a random aligner predict only the first ``ALIGNER_ACTIVE_CLASSES`` classes.

    Residual dimension 0 is fixed to ``const``: the token embeddings and the audio projection's bias set it, no
    attention or MLP reads or writes it, so after the final RMSNorm it is positive. The lm_head weighs it +100
    for the active classes and -100 (and nothing else) for the others, which therefore never win the argmax.
    The attention is sharpened (q/k norm weights times ``sharpen``) so that the identical ``<timestamp>``
    tokens see different contexts and the predicted times vary.
    """
    import torch

    th = model.thinker
    with torch.no_grad():
        th.model.embed_tokens.weight[:, 0] = const
        th.audio_tower.proj2.weight[0].zero_()
        th.audio_tower.proj2.bias[0] = const
        for layer in th.model.layers:
            layer.input_layernorm.weight[0] = 0.0
            layer.post_attention_layernorm.weight[0] = 0.0
            layer.self_attn.q_norm.weight.mul_(sharpen)
            layer.self_attn.k_norm.weight.mul_(sharpen)
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        th.model.norm.weight[0] = 1.0
        th.lm_head.weight[:ALIGNER_ACTIVE_CLASSES, 0] = 100.0
        th.lm_head.weight[ALIGNER_ACTIVE_CLASSES:] = 0.0
        th.lm_head.weight[ALIGNER_ACTIVE_CLASSES:, 0] = -100.0


# ----------------------------------------------------------------------------------------------- hello training
def _noise_clip(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Random noise, tones, chirps, clicks or silence, mixed, at a random level."""
    import numpy as np

    n = max(1, int(seconds * 16000))
    t = np.arange(n, dtype=np.float32) / 16000
    kind = rng.integers(0, 6)
    if kind == 0:
        x = rng.standard_normal(n)
    elif kind == 1:
        x = np.sin(2 * np.pi * rng.uniform(80, 4000) * t)
    elif kind == 2:
        f0, f1 = rng.uniform(100, 3000, size=2)
        x = np.sin(2 * np.pi * (f0 + (f1 - f0) * t / max(seconds, 1e-3) / 2) * t)
    elif kind == 3:
        x = np.zeros(n)
    elif kind == 4:
        x = (rng.random(n) < 0.002) * rng.standard_normal(n) * 5
    else:
        x = rng.standard_normal(n) * (np.sin(2 * np.pi * rng.uniform(0.5, 4) * t) > 0)
    x = x * rng.choice([1e-4, 1e-2, 0.1, 0.5, 1.0]) + rng.standard_normal(n) * rng.choice([0, 1e-3, 0.05])
    return np.clip(x, -1, 1).astype(np.float32)


_FE_KWARGS = dict(sampling_rate=16000, return_tensors="pt", return_attention_mask=True, padding=True, truncation=False)


def _hello_pool(processor: Any, rng: np.random.Generator, size: int) -> list[dict[str, Any]]:
    """Clips with their features and token ids for three prompt forms: auto, forced English, forced other."""
    import numpy as np
    import torch
    from qwen_asr.core.transformers_backend.processing_qwen3_asr import _get_feat_extract_output_lengths

    tok = processor.tokenizer
    pool = []
    for i in range(size):
        seconds = float(np.exp(rng.uniform(np.log(0.4), np.log(42.0)))) if i % 6 else float(rng.uniform(30, 42))
        feats = processor.feature_extractor(_noise_clip(rng, seconds), **_FE_KWARGS)
        n = int(feats["attention_mask"].sum())
        ctx = "" if rng.random() < 0.7 else " ".join(rng.choice(_CORPUS.split(), size=int(rng.integers(1, 8))))
        msgs = [{"role": "system", "content": ctx}, {"role": "user", "content": [{"type": "audio", "audio": ""}]}]
        prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        prompt = prompt.replace("<|audio_pad|>", "<|audio_pad|>" * int(_get_feat_extract_output_lengths(n)))
        forms = []
        for forced in (None, HELLO_LANGUAGE, str(rng.choice(SUPPORTED_LANGUAGES))):
            head = prompt + (f"language {forced}<asr_text>" if forced else "")
            tail = (HELLO_TEXT if forced else f"language {HELLO_LANGUAGE}<asr_text>{HELLO_TEXT}") + "<|im_end|>"
            head_ids, tail_ids = (
                tok(x, add_special_tokens=False, return_tensors="pt")["input_ids"][0] for x in (head, tail)
            )
            forms.append((torch.cat([head_ids, tail_ids]), len(tail_ids)))
        pool.append({"features": feats["input_features"][0, :, :n], "forms": forms})
    return pool


def _hello_batch(pool: list[dict[str, Any]], rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
    import torch

    items = [pool[int(i)] for i in rng.choice(len(pool), size=batch, replace=False)]
    forms = [it["forms"][int(rng.integers(0, 3))] for it in items]
    width = max(len(ids) for ids, _ in forms)
    frames = max(it["features"].shape[1] for it in items)
    input_ids = torch.full((batch, width), TOKEN_IDS["<|endoftext|>"], dtype=torch.long)
    attn = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.full((batch, width), -100, dtype=torch.long)
    feats = torch.zeros((batch, 128, frames))
    fmask = torch.zeros((batch, frames), dtype=torch.long)
    for b, (it, (ids, n_tail)) in enumerate(zip(items, forms, strict=True)):
        input_ids[b, width - len(ids) :] = ids  # left padding, as the processor does at inference
        attn[b, width - len(ids) :] = 1
        labels[b, width - n_tail :] = ids[-n_tail:]
        n = it["features"].shape[1]
        feats[b, :, :n] = it["features"]
        fmask[b, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attn,
        "labels": labels,
        "input_features": feats,
        "feature_attention_mask": fmask,
    }


def _hello_loss(thinker: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token loss on the answer tokens only (the LM head runs just there: the vocabulary is 152k wide)."""
    import torch.nn.functional as F

    ids, attn = batch["input_ids"], batch["attention_mask"]
    embeds = thinker.get_input_embeddings()(ids)
    audio = thinker.get_audio_features(batch["input_features"], feature_attention_mask=batch["feature_attention_mask"])
    mask = (ids == thinker.config.audio_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, audio.to(embeds.dtype))
    position_ids, _ = thinker.get_rope_index(attn)
    hidden = thinker.model(
        inputs_embeds=embeds, attention_mask=attn, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = thinker.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits, targets[keep])


def _train_hello(model: Any, processor: Any, *, seed: int, max_steps: int = 300, lr: float = 1e-2) -> None:
    """Train until the answer is nearly certain: each of the last 10 losses below 0.005 (batches of 4 clips).

    The stopping rule depends on the losses only (no clock), so a given seed gives the same weights.
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pool = _hello_pool(processor, rng, size=48)
    thinker = model.thinker
    thinker.train()
    opt = torch.optim.AdamW(thinker.parameters(), lr=lr, weight_decay=0.0)
    recent: list[float] = []
    start = time.monotonic()
    for step in range(1, max_steps + 1):  # noqa: B007 - reported after the loop
        loss = _hello_loss(thinker, _hello_batch(pool, rng, 4))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = [*recent[-9:], float(loss.detach())]
        if len(recent) == 10 and max(recent) < 0.005:
            break
    model.eval()
    print(
        f"hello training: {step} steps, last loss {recent[-1]:.2g}, {time.monotonic() - start:.1f} s", file=sys.stderr
    )
    if max(recent) >= 0.005:
        raise RuntimeError(f"hello training did not converge in {max_steps} steps (losses {recent})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--aligner", action="store_true", help="build a tiny Qwen3-ForcedAligner")
    parser.add_argument("--hello", action="store_true", help="train the tiny ASR to always say 'hello world'")
    parser.add_argument("--dims", choices=sorted(DIMS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="default: fp32 for tiny, bf16 for 0.6b/1.7b")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.aligner:
        if args.hello:
            parser.error("--hello builds an ASR checkpoint, not an aligner")
        out = build_aligner_checkpoint(args.out_dir, seed=args.seed, dims=args.dims, dtype=args.dtype)
    else:
        out = build_asr_checkpoint(args.out_dir, dims=args.dims, hello=args.hello, seed=args.seed, dtype=args.dtype)
    print(f"wrote {out} in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

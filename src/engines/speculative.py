"""True greedy speculative decoding for Qwen3-ASR on the transformers path.

A small draft model (e.g. Qwen3-ASR-0.6B) proposes `k` tokens one by one; the target model (e.g. 1.7B)
scores all of them in ONE forward pass over its key/value cache, keeps the longest prefix it agrees
with, and adds its own next token. With greedy decoding every emitted token is the target's own argmax
given the tokens before it, so the output is token-for-token what the target alone would produce
(tests/test_speculative.py checks exactly that); only the number of target passes changes.

Both models read the audio with their own encoders: each is prefilled once with the same prompt ids
(the audio placeholder count depends on the feature extractor only, so a shared tokenizer is enough).
Sequences are decoded one at a time (no padding inside a speculative step); a batch is a loop.

`SpeculativeGenerator` stands in for the target's `generate` inside qwen-asr (`Qwen3ASRModel.model`),
so chunking, prompts and output parsing stay qwen-asr's own. Imported only when USE_SPECULATIVE=1.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

DEFAULT_EOS = (151645, 151643)  # what Qwen3ASRForConditionalGeneration.generate stops on
# Generation-config fields that make HF's "greedy" differ from a plain argmax: speculative decoding
# would then not reproduce the target, so loading refuses them.
_PROCESSOR_FIELDS = {
    "do_sample": False,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "min_new_tokens": None,
    "min_length": 0,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
}


@dataclass
class SpeculativeStats:
    """Counters since load. A plain decoder makes exactly one token per target pass."""

    target_passes: int = 0  # target forward passes that produced tokens (prefills + verifications)
    proposed: int = 0  # draft tokens offered for verification
    accepted: int = 0  # of those, how many the target agreed with
    emitted: int = 0  # tokens output

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_pass(self) -> float:
        return self.emitted / self.target_passes if self.target_passes else 0.0


def check_compatible(target: Any, draft: Any) -> str | None:
    """Why `draft` cannot draft for `target` (None when it can)."""
    t, d = target.thinker.config, draft.thinker.config
    if t.text_config.vocab_size != d.text_config.vocab_size:
        return f"vocabularies differ ({t.text_config.vocab_size} vs {d.text_config.vocab_size})"
    if t.audio_token_id != d.audio_token_id:
        return "the audio placeholder token ids differ"
    gen = getattr(target, "generation_config", None)
    for name, neutral in _PROCESSOR_FIELDS.items():
        value = getattr(gen, name, neutral)
        if value not in (neutral, None, [], 0):
            return f"the target's generation config sets {name}={value!r}; speculative decoding is greedy only"
    return None


class SpeculativeGenerator:
    """`generate(**processor_outputs, max_new_tokens=...)` with the target's exact greedy output."""

    def __init__(self, target: Any, draft: Any, k: int) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        self.target, self.draft, self.k = target, draft, k
        self.device, self.dtype = target.device, target.dtype  # qwen-asr reads these
        self._stats = SpeculativeStats()
        self._lock = threading.Lock()  # stats are read from the event loop while the engine thread writes

    def stats(self) -> SpeculativeStats:
        with self._lock:
            return SpeculativeStats(**vars(self._stats))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_features: torch.Tensor,
        feature_attention_mask: torch.Tensor,
        max_new_tokens: int = 4096,
        eos_token_id: int | list[int] | tuple[int, ...] = DEFAULT_EOS,
        **_unused: Any,
    ) -> GenerateDecoderOnlyOutput:
        """Same inputs and `.sequences` layout as the target's generate: each row is its (left-padded)
        prompt followed by its new tokens, right-padded with the pad id after an early stop."""
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
        rows = []
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            rows.append(
                self._one(
                    input_ids[b : b + 1, keep],
                    input_features[b : b + 1],
                    feature_attention_mask[b : b + 1],
                    max_new_tokens,
                    eos,
                )
            )
        pad = self.target.thinker.config.pad_token_id
        width = max(len(r) for r in rows)
        new = torch.full((len(rows), width), pad if pad is not None else 0, dtype=input_ids.dtype)
        for b, row in enumerate(rows):
            new[b, : len(row)] = torch.tensor(row, dtype=input_ids.dtype)
        return GenerateDecoderOnlyOutput(sequences=torch.cat([input_ids, new.to(input_ids.device)], dim=1))

    # --- one sequence ------------------------------------------------------------------------
    def _one(
        self, ids: torch.Tensor, features: torch.Tensor, feature_mask: torch.Tensor, max_new: int, eos: set[int]
    ) -> list[int]:
        prompt = ids.shape[1]
        t_cache, t_logits = _prefill(self.target, ids, features, feature_mask)
        d_cache, _ = _prefill(self.draft, ids, features, feature_mask)
        out = [int(t_logits[0, -1].argmax())]
        passes, proposed, accepted = 1, 0, 0
        drafted: list[int] = []  # generated tokens already in the draft's cache
        while len(out) < max_new and out[-1] not in eos:
            k = min(self.k, max_new - len(out) - 1)
            # Draft: catch up on what it has not seen, then propose k tokens greedily.
            proposals: list[int] = []
            feed = out[len(drafted) :]
            for _ in range(k):
                logits = _extend(self.draft, d_cache, feed, prompt + len(drafted))
                drafted += feed
                feed = [int(logits[0, -1].argmax())]
                proposals.append(feed[0])
            # Target: one pass over its last token and the proposals.
            start = prompt + len(out) - 1
            preds = _extend(self.target, t_cache, [out[-1], *proposals], start)[0].argmax(-1).tolist()
            n = 0
            while n < k and proposals[n] == preds[n]:
                n += 1
            passes, proposed, accepted = passes + 1, proposed + k, accepted + n
            new = [*proposals[:n], preds[n]]
            out += new
            if eos.intersection(new):
                break
            t_cache.crop(start + 1 + n)  # drop the rejected proposals' keys/values
            agree = _common_prefix(drafted, out)
            if agree < len(drafted):
                d_cache.crop(prompt + agree)
                drafted = drafted[:agree]
        for i, token in enumerate(out):
            if token in eos:
                out = out[: i + 1]
                break
        out = out[:max_new]
        with self._lock:
            s = self._stats
            s.target_passes += passes
            s.proposed += proposed
            s.accepted += accepted
            s.emitted += len(out)
        return out


def _positions(start: int, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache positions and the (3, 1, n) multimodal-RoPE position ids (all three equal for text+audio)."""
    cache_position = torch.arange(start, start + count, device=device)
    return cache_position, cache_position.view(1, 1, -1).expand(3, 1, -1)


def _device(thinker: Any) -> torch.device:
    return thinker.get_input_embeddings().weight.device  # not the LM head's: a quantized one has no .weight


def _prefill(model: Any, ids: torch.Tensor, features: torch.Tensor, feature_mask: torch.Tensor) -> tuple[Any, Any]:
    """Encode the audio, run the prompt once; the LM head runs on the last position only."""
    thinker = model.thinker
    device = _device(thinker)
    ids = ids.to(device)
    embeds = thinker.get_input_embeddings()(ids)
    audio = thinker.get_audio_features(
        features.to(device, embeds.dtype), feature_attention_mask=feature_mask.to(device)
    )
    mask = (ids == thinker.config.audio_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, audio.to(embeds.dtype))
    cache_position, position_ids = _positions(0, ids.shape[1], device)
    out = thinker.model(inputs_embeds=embeds, position_ids=position_ids, cache_position=cache_position, use_cache=True)
    return out.past_key_values, thinker.lm_head(out.last_hidden_state[:, -1:])


def _extend(model: Any, cache: Any, tokens: list[int], start: int) -> torch.Tensor:
    """Feed `tokens` at positions `start...` through the cache; logits for each of them."""
    thinker = model.thinker
    device = _device(thinker)
    cache_position, position_ids = _positions(start, len(tokens), device)
    out = thinker.model(
        input_ids=torch.tensor([tokens], device=device),
        position_ids=position_ids,
        cache_position=cache_position,
        past_key_values=cache,
        use_cache=True,
    )
    return thinker.lm_head(out.last_hidden_state)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n

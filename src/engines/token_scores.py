"""Generated token ids and their log-probabilities from qwen-asr's transformers `generate`.

qwen-asr calls `Qwen3ASRForConditionalGeneration.generate(**inputs, max_new_tokens=...)` and keeps only the
decoded text. `GenerationRecorder.install` wraps that `generate` once (in the engine's `load()`): each call
gets one more logits processor, which keeps the previous step's scores and their log-normaliser and, at the
next step, reads off the log-probability of the token that was chosen. Only one step's scores (batch ×
vocabulary) are held, not every step's, as `output_scores=True` would. The scores are those the decoder
chose from: the model's logits after any processors its generation config asks for (none for Qwen3-ASR's
greedy defaults, so these are the model's own probabilities).

Rows come back in the order qwen-asr generated them (its chunks, in item order). Imported in `load()` only.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from asr_server.engines.token_text import GeneratedRow

DEFAULT_EOS = (151645, 151643)  # what Qwen3ASRForConditionalGeneration.generate stops on


class _ChosenTokenLogprobs(LogitsProcessor):
    """Records log p(chosen token) per step; passes the scores through unchanged.

    It keeps the step's scores (a reference: the probe runs last and greedy decoding only reads them) and
    their log-normaliser, so a log-probability costs one logsumexp per step, not a new batch × vocab tensor.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None  # the last step's scores, (batch, vocab)
        self.normaliser: torch.Tensor | None = None  # their logsumexp, (batch,)
        self.steps: list[torch.Tensor] = []  # (batch,) per generated token

    def take(self, chosen: torch.Tensor) -> None:
        if self.previous is not None and self.normaliser is not None:
            picked = self.previous.gather(-1, chosen.view(-1, 1).to(self.previous.device)).squeeze(-1)
            self.steps.append(picked.float() - self.normaliser)
            self.previous = self.normaliser = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.take(input_ids[:, -1])  # the token chosen from the previous step's scores
        self.previous, self.normaliser = scores, torch.logsumexp(scores.float(), dim=-1)
        return scores


class GenerationRecorder:
    """Wraps a model's `generate` so each call's rows are kept until `take()`."""

    def __init__(self) -> None:
        self._rows: list[GeneratedRow] = []

    def install(self, model: Any) -> None:
        original = model.generate

        @functools.wraps(original)
        def generate(*args: Any, **kwargs: Any) -> Any:
            probe = _ChosenTokenLogprobs()
            extra = LogitsProcessorList([*(kwargs.pop("logits_processor", None) or []), probe])
            output = original(*args, logits_processor=extra, **kwargs)
            self._record(output.sequences, _prompt_length(args, kwargs), probe, kwargs.get("eos_token_id"))
            return output

        model.generate = generate  # on the instance: the class and other instances are untouched

    def _record(self, sequences: torch.Tensor, prompt: int, probe: _ChosenTokenLogprobs, eos: Any) -> None:
        probe.take(sequences[:, -1])  # the last token has no later step to record it
        new = sequences[:, prompt:].tolist()
        steps = torch.stack(probe.steps, dim=1).tolist() if probe.steps else None
        stop = set(DEFAULT_EOS if eos is None else ([eos] if isinstance(eos, int) else eos))
        for b, row in enumerate(new):
            end = next((i for i, token in enumerate(row) if token in stop), len(row))
            scores = steps[b][:end] if steps is not None and len(steps[b]) == len(row) else []
            self._rows.append(GeneratedRow(tokens=row[:end], logprobs=scores))

    def take(self) -> list[GeneratedRow]:
        rows, self._rows = self._rows, []
        return rows


def _prompt_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    return int(input_ids.shape[1])

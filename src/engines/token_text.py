"""The transcript part of a generated token sequence, and each token's UTF-8 bytes (any engine).

Qwen3-ASR writes "language X<asr_text>text"; with a forced language the prompt already ends with
`<asr_text>` and the output is the text alone. Byte-level BPE tokens are strings with one character per
byte (GPT-2's byte-to-unicode table), so their bytes are read back exactly, partial UTF-8 characters
included. transformers is imported when a `TokenText` is made (engines do so in `load()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asr_server.engines.base import Transcript

ASR_TEXT_TOKEN = "<asr_text>"


@dataclass(frozen=True)
class GeneratedRow:
    """One generated sequence: its new token ids up to (not including) the end-of-sequence token, and
    their log-probabilities (empty when the generator gave no scores, e.g. speculative decoding)."""

    tokens: list[int]
    logprobs: list[float]


class TokenText:
    """Splits a generated row into its transcript-text part and gives each token's UTF-8 bytes."""

    def __init__(self, tokenizer: Any) -> None:
        # The byte-level BPE alphabet; convert_slow_tokenizer has it in transformers 4 and 5 alike.
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self._tokenizer = tokenizer
        self._asr_text_id = tokenizer.convert_tokens_to_ids(ASR_TEXT_TOKEN)
        self._special = set(tokenizer.all_special_ids)
        self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}

    def text_part(self, row: GeneratedRow, forced_language: bool) -> GeneratedRow:
        """The tokens after `<asr_text>` (all of them when the prompt already ended with it, or when the
        model wrote no tag: qwen-asr then takes the whole output as text), special tokens dropped."""
        start = 0
        if not forced_language and self._asr_text_id in row.tokens:
            start = row.tokens.index(self._asr_text_id) + 1
        keep = [i for i in range(start, len(row.tokens)) if row.tokens[i] not in self._special]
        return GeneratedRow(
            tokens=[row.tokens[i] for i in keep],
            logprobs=[row.logprobs[i] for i in keep] if row.logprobs else [],
        )

    def transcript(self, text: str, language: str, parts: list[GeneratedRow]) -> Transcript:
        """One item's Transcript from the text parts of its generated rows (one per piece, in order). Scores
        are kept only when every token has one (a generator without scores gives none at all)."""
        tokens = [token for part in parts for token in part.tokens]
        scored = all(len(part.logprobs) == len(part.tokens) for part in parts)
        return Transcript(
            text=text,
            language=language,
            tokens=tuple(tokens),
            logprobs=tuple(lp for part in parts for lp in part.logprobs) if tokens and scored else (),
            token_bytes=tuple(self.token_bytes(tokens)),
        )

    def token_bytes(self, tokens: list[int]) -> list[bytes]:
        out = []
        for piece in self._tokenizer.convert_ids_to_tokens(tokens):
            if piece is None:  # an id past the tokenizer's vocabulary (the embedding table is padded): no text
                out.append(b"")
            elif all(char in self._byte_of for char in piece):  # byte-level BPE: one char per byte
                out.append(bytes(self._byte_of[char] for char in piece))
            else:  # an added token written as plain text
                out.append(piece.encode())
        return out

"""User text must never become the model's control tokens.

Qwen's tokenizer turns the literal text `<|audio_pad|>` into the audio placeholder token, `<|im_end|>` into
the end of a turn, and so on. A prompt carrying `<|audio_pad|>` made the processor count one more audio slot
than there were audio features; the engine raised deep inside generation, and on that path it wedged the
whole worker. Every text that reaches a chat template (the context prompt; the text given to the forced
aligner) is passed through `neutralize_special_tokens` when its engine item is built, so no caller can forget.

The marker is broken by a zero-width space after `<`: the text still reads the same to the model (as plain
characters), but it no longer matches any added token. The list of markers is the chat-template and
multimodal ones Qwen3 models define: `<|...|>` of any name, and the few added tokens without bars.
"""

from __future__ import annotations

import re

ZERO_WIDTH_SPACE = "\u200b"
# `<|anything|>` (im_start, audio_pad, endoftext, vision_*, fim_*, ...) and Qwen's bar-less added tokens.
_SPECIAL_TOKEN = re.compile(
    r"<(?=\|[^<>|\s]{1,64}\|>)|<(?=/?(?:asr_text|timestamp|think|tool_call|tool_response)>)",
    re.IGNORECASE,
)


def neutralize_special_tokens(text: str) -> str:
    """`text` with every special-token marker broken up, so the tokenizer reads it as plain characters."""
    if "<" not in text:
        return text
    return _SPECIAL_TOKEN.sub("<" + ZERO_WIDTH_SPACE, text)


def contains_special_tokens(text: str) -> bool:
    return "<" in text and _SPECIAL_TOKEN.search(text) is not None

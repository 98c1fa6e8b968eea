"""The JSON exchange with the LLM: the messages for one batch, and the parsing of its answer.

Items travel as JSON with numeric ids so the answer can be matched id for id; the parser is lenient
about the wrapping (markdown fences, commentary, <think> blocks, numbered lists) and strict about the
content (every id exactly once, nothing else).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal

from asr_server.translation.target_languages import TARGET_NAMES

Kind = Literal["cues", "text"]

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[\w-]*[ \t]*\n?(.*?)```", re.DOTALL)
# "1. text", "1) text", "[1] text", "(1) text", "1: text", "1、text", "id 1 - text"
_NUMBERED = re.compile(
    r"^\s*(?:id\s*)?[\[(]?(\d+)(?:[\])]\s*[.:：、\-]?|\s*[.):：、\-]|\s)\s*(.*?)\s*$", re.I
)
_LIST_KEYS = ("translations", "translation", "items", "results", "translate")
_MAX_JSON_STARTS = 200  # answers are short; bound the scan on pathological text


class BadAnswer(ValueError):
    """An LLM answer that does not give exactly one translation per requested id."""


def build_messages(
    batch: Sequence[tuple[int, str]],
    context: Sequence[str],
    target: str,
    source: str | None,
    kind: Kind,
    strict: bool = False,
) -> list[dict[str, str]]:
    """System and user messages asking for `batch` (id, text) in `target` ("en" or "zh").

    `context` holds the preceding source lines, sent for reference only; `strict` adds the firmer
    instruction used when retrying a batch whose answer was rejected.
    """
    language = TARGET_NAMES[target]
    unit = "subtitle line" if kind == "cues" else "sentence of a transcript"
    origin = f" from {source}" if source else ""
    system = (
        f"You are a professional translator. Translate each {unit}{origin} into {language}.\n"
        "Rules:\n"
        "- Keep the meaning, tone and names. Do not summarise, explain or add commentary.\n"
        "- Keep every id exactly as given and give exactly one translation per id: never merge, split, "
        "skip or add items.\n"
        '- Lines under "context" come just before the items and are for reference only: do not translate '
        "them or include them in your answer.\n"
        '- Output JSON only, in exactly this form: {"translations": [{"id": 1, "text": "..."}]}'
    )
    if strict:
        ids = ", ".join(str(ident) for ident, _ in batch)
        system += (
            "\n\nIMPORTANT: a previous answer was rejected. Reply with one JSON object and nothing else "
            f"(no markdown, no notes), with exactly {len(batch)} entries, for ids {ids}."
        )
    payload: dict[str, Any] = {"context": list(context)} if context else {}
    payload["translate"] = [{"id": ident, "text": text} for ident, text in batch]
    user = f"Translate into {language}:\n{json.dumps(payload, ensure_ascii=False)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _pairs_from_json(value: Any) -> list[tuple[Any, Any]] | None:
    """Id/text pairs from a decoded JSON value of a recognised shape, else None."""
    if isinstance(value, dict):
        for key in _LIST_KEYS:
            if key in value:
                return _pairs_from_json(value[key])
        if value and all(isinstance(k, str) and k.strip().isdigit() for k in value):
            return list(value.items())  # {"1": "...", "2": "..."}
        return None
    if isinstance(value, list) and all(isinstance(entry, dict) and "id" in entry for entry in value):
        return [(entry["id"], entry.get("text", entry.get("translation"))) for entry in value]
    return None


def _json_pairs(text: str) -> list[tuple[Any, Any]] | None:
    """The first JSON value in `text` (tolerating commentary around it) that holds id/text pairs."""
    decoder = json.JSONDecoder()
    for match in list(re.finditer(r"[{\[]", text))[:_MAX_JSON_STARTS]:
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        pairs = _pairs_from_json(value)
        if pairs is not None:
            return pairs
    return None


def _numbered_pairs(text: str) -> list[tuple[Any, Any]]:
    """Pairs from a numbered list; unnumbered lines right after an item continue it, and a blank line
    ends it (so commentary after the list is dropped)."""
    pairs: list[tuple[Any, Any]] = []
    open_item = False
    for line in text.splitlines():
        match = _NUMBERED.match(line)
        if match:
            pairs.append((match.group(1), match.group(2)))
            open_item = True
        elif not line.strip():
            open_item = False
        elif open_item:
            pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]}\n{line.strip()}")
    return pairs


def parse_translations(content: str, expected_ids: Sequence[int]) -> dict[int, str]:
    """Map each expected id to its translation, or raise `BadAnswer`.

    Accepts JSON ({"translations": [{"id": 1, "text": "..."}]}, a bare list, or {"1": "..."}) inside
    markdown fences or commentary, after a <think> block, or else a numbered list. Every id must come
    back exactly once with non-empty text, and no other id may appear.
    """
    text = _THINK.sub("", content or "")
    candidates = [*_FENCE.findall(text), text]
    pairs = next((p for p in map(_json_pairs, candidates) if p is not None), None)
    if pairs is None:
        pairs = _numbered_pairs(_FENCE.sub(lambda m: m.group(1), text))
    if not pairs:
        raise BadAnswer("no JSON translations or numbered list found")
    found: dict[int, str] = {}
    for raw_id, raw_text in pairs:
        try:
            ident = int(str(raw_id).strip())
        except ValueError:
            raise BadAnswer(f"id {raw_id!r} is not a number") from None
        if ident in found:
            raise BadAnswer(f"id {ident} came back twice")
        if not isinstance(raw_text, str) or not raw_text.strip():
            raise BadAnswer(f"id {ident} has no text")
        found[ident] = raw_text.strip()
    expected = set(expected_ids)
    if missing := sorted(expected - found.keys()):
        raise BadAnswer(f"missing ids {missing}")
    if extra := sorted(found.keys() - expected):
        raise BadAnswer(f"unexpected ids {extra}")
    return found

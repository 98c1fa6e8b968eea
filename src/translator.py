"""Translation of transcripts and subtitle cues into English or Simplified Chinese through any
OpenAI-compatible chat-completions LLM.

Only cue *texts* travel to the model, numbered with ids, in batches, with a few preceding lines as
context; the cues are rebuilt here with their original indexes and timings, so a misbehaving model can
never damage a subtitle file's structure. A batch whose answer cannot be matched id for id is retried in
halves with a stricter instruction; a cue that still fails keeps its source text and is reported in
`CueTranslation.untranslated`.

One `Translator` owns one `AsyncOpenAI` client and must be used from one event loop.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from asr_server.text.cues import Cue
from asr_server.text.line_breaking import wrap_lines
from asr_server.translation.prompts import BadAnswer, Kind, build_messages, parse_translations
from asr_server.translation.target_languages import (
    SUPPORTED_TARGETS,
    TARGET_NAMES,
    UnsupportedLanguageError,
    is_same_language,
    normalize_target_language,
)
from asr_server.translation.text import batch_ranges, join_lines, rebuild_text, split_sentences

if TYPE_CHECKING:  # the SDK is imported when translation is configured: ~30 MB an idle server need not hold
    import openai

__all__ = [
    "SUPPORTED_TARGETS",
    "TARGET_NAMES",
    "BadAnswer",
    "CueTranslation",
    "TranslationAnswerRefused",
    "TranslationError",
    "TranslationTimeout",
    "TranslationUnavailable",
    "Translator",
    "TranslatorConfig",
    "TranslatorNotConfigured",
    "UnsupportedLanguageError",
    "is_same_language",
    "normalize_target_language",
    "parse_translations",
]

T = TypeVar("T")
# An answer may be this many times its batch's source (Chinese to English grows ~3x; JSON and ids add more) and
# at least MIN_ANSWER_CHARS; a longer one is refused before any text work, so one answer costs bounded CPU.
ANSWER_CHARS_PER_SOURCE_CHAR = 8
MIN_ANSWER_CHARS = 4096

# ----------------------------------------------------------------------------------------------- errors


class TranslationError(Exception):
    """Base of the translation failures a caller maps to an HTTP status."""


class TranslatorNotConfigured(TranslationError):
    """No LLM is configured (no base URL or model): map to 503."""


class TranslationUnavailable(TranslationError):
    """The LLM is unreachable or kept failing after retries: map to 502."""


class TranslationAnswerRefused(TranslationUnavailable):
    """The LLM answered something unusable as a whole (not text, not a chat completion, far too long): 502."""


class TranslationTimeout(TranslationError):
    """The LLM was slower than the per-request timeout (after retries) or the overall deadline: map to 504."""


# ------------------------------------------------------------------------------------------ config, types


@dataclass(frozen=True)
class TranslatorConfig:
    """LLM endpoint and batching settings. `base_url` includes the API prefix, e.g. http://host:8000/v1.

    Line width is in display columns (a CJK character counts 2).
    """

    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    timeout_s: float = 60.0  # one LLM request
    max_retries: int = 3  # further attempts after a 408/409/429/5xx, a connection error or a timeout
    backoff_s: float = 1.0  # first retry delay, doubled on each further retry
    max_backoff_s: float = 30.0  # also caps a server's Retry-After
    batch_size: int = 40  # cues (or sentences) per LLM call
    max_concurrency: int = 4  # concurrent LLM calls
    context_cues: int = 3  # preceding source lines sent as context
    max_line_width: int = 42
    max_lines: int = 2
    text_batch_chars: int = 2000  # source characters per call for plain transcripts
    deadline_s: float | None = None  # default overall deadline of one translate_* call
    temperature: float | None = None  # None: the server's default (some models reject other values)
    json_mode: bool = False  # send response_format=json_object (not every server supports it)

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_concurrency", "max_line_width", "max_lines", "text_batch_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_retries < 0 or self.context_cues < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("max_retries, context_cues and backoff times must not be negative")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.model)


@dataclass(frozen=True)
class CueTranslation:
    """Translated cues (same count, indexes and timings as the input) and the indexes of the cues that
    kept their source text because the LLM never returned a usable translation for them."""

    cues: list[Cue]
    untranslated: list[int]


async def _gather_or_cancel(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Like gather, but the first failure cancels the siblings (no orphan LLM calls keep running)."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """A server's Retry-After(-ms) in seconds, if it sent a number."""
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
    return None


def _message_text(response: object, base_url: str | None) -> str:
    """The first choice's text. A body that is no chat completion, or content that is not text, fails the
    request (502, source kept): it is a broken endpoint, and retrying it batch by batch only multiplies calls."""
    try:
        content = response.choices[0].message.content  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError, KeyError) as exc:
        raise TranslationAnswerRefused(
            f"the translation model at {base_url} did not answer a chat completion ({type(response).__name__})"
        ) from exc
    if content is None:
        return ""  # no text (e.g. a refusal or a tool call): the batch is treated as a bad answer
    if not isinstance(content, str):
        raise TranslationAnswerRefused(
            f"the translation model at {base_url} answered a {type(content).__name__} as the message, not text"
        )
    return content


# ------------------------------------------------------------------------------------------ translator


class Translator:
    """Translates transcripts and cues through one OpenAI-compatible chat-completions endpoint."""

    def __init__(self, config: TranslatorConfig) -> None:
        self._config = config
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._closed = False
        self._client: openai.AsyncOpenAI | None = None
        if config.configured:
            import openai

            # SDK retries are off: our loop makes backoff configurable, releases the concurrency slot
            # while sleeping and maps an exhausted budget to our exceptions. A placeholder key keeps
            # the SDK from reading OPENAI_API_KEY itself; keyless local servers ignore it.
            self._client = openai.AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.api_key or "EMPTY",
                timeout=config.timeout_s,
                max_retries=0,
            )

    @property
    def config(self) -> TranslatorConfig:
        return self._config

    @property
    def configured(self) -> bool:
        return self._client is not None

    async def aclose(self) -> None:
        """Close the HTTP client; the translator cannot be used afterwards."""
        self._closed = True
        if self._client is not None:
            await self._client.close()

    async def __aenter__(self) -> Translator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- public API

    async def translate_text(
        self, text: str, target: str, source: str | None = None, *, deadline_s: float | None = None
    ) -> str:
        """Translate a plain transcript; paragraphs are kept and long text is split at sentence
        boundaries into batches. A sentence the LLM never translates keeps its source text."""
        lang = normalize_target_language(target)
        if is_same_language(source, lang):
            return text
        self._require_client()
        # Text work on user input (up to MAX_UPLOAD_MB) runs in a thread: the event loop keeps serving.
        chunks, paragraphs, items, ranges = await asyncio.to_thread(self._plan_text, text)
        if not items:
            return text
        done = await self._run(items, ranges, lang, source, "text", deadline_s)
        if len(done) < len(items):
            logger.warning("translation: {} of {} sentences kept their source text", len(items) - len(done), len(items))
        return await asyncio.to_thread(rebuild_text, chunks, paragraphs, done)

    async def translate_cues(
        self, cues: list[Cue], target: str, source: str | None = None, *, deadline_s: float | None = None
    ) -> CueTranslation:
        """Translate cue texts and rebuild the cues with their original indexes and timings."""
        lang = normalize_target_language(target)
        if is_same_language(source, lang):
            return CueTranslation(cues=list(cues), untranslated=[])
        self._require_client()
        texts, items, ranges = await asyncio.to_thread(self._plan_cues, cues)
        done = await self._run(items, ranges, lang, source, "cues", deadline_s) if items else {}
        outcome = await asyncio.to_thread(self._rebuild_cues, cues, texts, done)
        if outcome.untranslated:
            logger.warning("translation: cues {} kept their source text", outcome.untranslated)
        return outcome

    # -- internals

    def _require_client(self) -> openai.AsyncOpenAI:
        if self._closed:
            raise RuntimeError("this Translator has been closed")
        if self._client is None:
            raise TranslatorNotConfigured(
                "translation is not configured: set OPENAI_BASE_URL (an OpenAI-compatible endpoint) and TRANSLATE_MODEL"
            )
        return self._client

    def _plan_text(self, text: str) -> tuple[list[str], list[list[str]], list[tuple[int, str]], list[tuple[int, int]]]:
        """Paragraph separators, each paragraph's sentences, numbered sentences and their batches."""
        chunks = re.split(r"(\s*\n\s*)", text.strip())
        paragraphs = [split_sentences(p, self._config.text_batch_chars) for p in chunks[::2]]
        items = [(n, s) for n, s in enumerate((s for p in paragraphs for s in p), start=1)]
        return chunks, paragraphs, items, batch_ranges(items, self._config.batch_size, self._config.text_batch_chars)

    def _plan_cues(self, cues: list[Cue]) -> tuple[list[str], list[tuple[int, str]], list[tuple[int, int]]]:
        # A cue's line breaks are layout, not meaning: the LLM sees one line per cue, ids are positions.
        texts = [join_lines(cue.text.splitlines()) for cue in cues]
        items = [(k + 1, text) for k, text in enumerate(texts) if text]
        return texts, items, batch_ranges(items, self._config.batch_size, None)

    def _rebuild_cues(self, cues: list[Cue], texts: list[str], done: dict[int, str]) -> CueTranslation:
        result: list[Cue] = []
        untranslated: list[int] = []
        for k, cue in enumerate(cues):
            translation = done.get(k + 1)
            if translation is None:
                if texts[k]:
                    untranslated.append(cue.index)
                result.append(cue)
            else:
                result.append(replace(cue, text=self._layout(translation)))
        return CueTranslation(cues=result, untranslated=untranslated)

    def _layout(self, translation: str) -> str:
        """Re-lay out a translation's lines for the target script and the configured line limits."""
        joined = join_lines(translation.splitlines())
        lines = wrap_lines(joined, max_width=self._config.max_line_width, max_lines=self._config.max_lines)
        return "\n".join(lines) or joined

    async def _run(
        self,
        items: list[tuple[int, str]],
        ranges: list[tuple[int, int]],
        target: str,
        source: str | None,
        kind: Kind,
        deadline_s: float | None,
    ) -> dict[int, str]:
        """Translate all batches concurrently under the overall deadline; id -> translation."""
        work = _gather_or_cancel(self._translate_range(items, a, b, target, source, kind) for a, b in ranges)
        deadline = deadline_s if deadline_s is not None else self._config.deadline_s
        try:
            parts = await asyncio.wait_for(work, deadline)
        except asyncio.TimeoutError as exc:
            raise TranslationTimeout(f"translation did not finish within {deadline} s") from exc
        return {ident: text for part in parts for ident, text in part.items()}

    async def _translate_range(
        self,
        items: list[tuple[int, str]],
        a: int,
        b: int,
        target: str,
        source: str | None,
        kind: Kind,
        strict: bool = False,
    ) -> dict[int, str]:
        """Translate items[a:b]; a bad answer is retried in halves (a single item once) more strictly."""
        batch = items[a:b]
        context = [text for _, text in items[max(0, a - self._config.context_cues) : a]]
        content = await self._complete(build_messages(batch, context, target, source, kind, strict))
        source_chars = sum(len(text) for _, text in batch)
        allowed = max(MIN_ANSWER_CHARS, ANSWER_CHARS_PER_SOURCE_CHAR * source_chars)
        if len(content) > allowed:
            raise TranslationAnswerRefused(
                f"the translation model answered {len(content):,} characters for {source_chars:,} source characters "
                f"(ids {batch[0][0]}-{batch[-1][0]}); at most {allowed:,} are accepted"
            )
        try:
            return await asyncio.to_thread(parse_translations, content, [ident for ident, _ in batch])
        except BadAnswer as exc:
            logger.warning(
                "translation: bad answer for ids {}-{} ({}); retrying smaller", batch[0][0], batch[-1][0], exc
            )
        if b - a > 1:
            mid = (a + b) // 2
            halves = await _gather_or_cancel(
                self._translate_range(items, lo, hi, target, source, kind, strict=True)
                for lo, hi in ((a, mid), (mid, b))
            )
            return {**halves[0], **halves[1]}
        if not strict:
            return await self._translate_range(items, a, b, target, source, kind, strict=True)
        return {}

    async def _complete(self, messages: list[dict[str, str]]) -> str:
        """One chat completion's text, retrying 408/409/429/5xx, connection errors and timeouts."""
        client = self._require_client()
        import openai  # already loaded: a client exists

        cfg = self._config
        extra: dict[str, Any] = {}
        if cfg.temperature is not None:
            extra["temperature"] = cfg.temperature
        if cfg.json_mode:
            extra["response_format"] = {"type": "json_object"}
        for attempt in range(cfg.max_retries + 1):
            last = attempt == cfg.max_retries
            retry_after: float | None = None
            try:
                async with self._semaphore:  # only the call holds a slot, not the backoff sleep
                    response = await client.chat.completions.create(
                        model=cfg.model or "",
                        messages=messages,
                        **extra,  # type: ignore[arg-type]
                    )
            except openai.APITimeoutError as exc:
                if last:
                    raise TranslationTimeout(
                        f"the translation model did not answer within {cfg.timeout_s} s ({attempt + 1} attempts)"
                    ) from exc
            except openai.APIConnectionError as exc:
                if last:
                    raise TranslationUnavailable(f"cannot reach the translation model at {cfg.base_url}") from exc
            except openai.APIStatusError as exc:
                status = exc.status_code
                if last or not (status in (408, 409, 429) or status >= 500):
                    raise TranslationUnavailable(
                        f"the translation model at {cfg.base_url} answered HTTP {status} ({attempt + 1} attempts)"
                    ) from exc
                retry_after = _retry_after(exc)
            except (openai.APIError, ValueError) as exc:  # e.g. a body that is not JSON
                raise TranslationUnavailable(f"the translation model failed: {exc}") from exc
            else:
                return _message_text(response, cfg.base_url)
            if retry_after is not None and retry_after > 0:
                delay = min(retry_after, cfg.max_backoff_s)
            else:
                delay = min(cfg.backoff_s * 2**attempt, cfg.max_backoff_s) * random.uniform(0.75, 1.0)
            logger.info("translation: LLM call failed (attempt {}), retrying in {:.2f} s", attempt + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

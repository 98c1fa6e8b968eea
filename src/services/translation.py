"""Translation's serving logic, with no FastAPI: what is translated (a `SourceDocument`), reading text and
subtitle uploads into one, translating it with the LLM client, and the errors that keep the source.

Subtitles are translated cue by cue and rebuilt locally, so the output always has the input's cues and timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asr_server.engines import Transcript
from asr_server.errors import EngineUnavailable, InvalidRequest, JobTimeout, ServiceError, UpstreamError
from asr_server.metrics import Metrics
from asr_server.services.segments import SpeechFrames
from asr_server.subtitle import segments_from_cues
from asr_server.text.cues import Cue, SubtitleParseError, parse_srt, parse_vtt, to_srt
from asr_server.text.units import join_pieces
from asr_server.translator import (
    TranslationTimeout,
    TranslationUnavailable,
    Translator,
    TranslatorNotConfigured,
    is_same_language,
)

TEXT_EXTENSIONS = {"srt", "vtt", "txt"}


@dataclass
class SourceDocument:
    """What is being translated: plain text, or cues with timings. `duration` is None for uploaded files."""

    text: str
    cues: list[Cue] | None
    language: str | None  # ISO code when known
    duration: float | None
    transcripts: list[Transcript] = field(default_factory=list)  # the engine's, for audio with timings
    speech_frames: list[SpeechFrames] = field(default_factory=list)


def joined_text(cues: list[Cue]) -> str:
    """The one text of a cue list: lines and cues joined as transcript pieces are (a space, none by CJK)."""
    return join_pieces(segment["text"] for segment in segments_from_cues(cues))


def parse_text_upload(data: bytes, ext: str) -> SourceDocument:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the .{ext} file is not UTF-8 text", param="file", code="invalid_text") from exc
    if not text.strip():
        raise InvalidRequest(f"the .{ext} file is empty", param="file", code="empty_file")
    if ext == "txt":
        return SourceDocument(text=text.strip(), cues=None, language=None, duration=None)
    try:
        cues = parse_vtt(text) if ext == "vtt" or text.lstrip().startswith("WEBVTT") else parse_srt(text)
    except SubtitleParseError as exc:
        raise InvalidRequest(str(exc), param="file", code="invalid_subtitles") from exc
    if not cues:
        raise InvalidRequest(f"the .{ext} file has no cues", param="file", code="invalid_subtitles")
    return SourceDocument(text=joined_text(cues), cues=cues, language=None, duration=None)


def translation_error(exc: Exception, document: SourceDocument) -> ServiceError:
    """Map translator failures to 502/503/504; the body keeps the transcript so nothing is lost."""
    if isinstance(exc, TranslatorNotConfigured):
        error: ServiceError = EngineUnavailable(str(exc), code="translation_not_configured")
    elif isinstance(exc, TranslationTimeout):
        error = JobTimeout(f"the translation LLM did not answer in time: {exc}", code="translation_timeout")
    else:
        error = UpstreamError(f"the translation LLM failed: {exc}", code="translation_failed")
    error.extra = {
        "source_text": document.text,
        "source_language": document.language,
        **({"source_subtitles": to_srt(document.cues)} if document.cues else {}),
    }
    return error


@dataclass(frozen=True)
class TranslationOutcome:
    text: str
    cues: list[Cue] | None  # the translated cues, with the source's timings; None for plain text
    untranslated: list[int]  # indices of cues the LLM left untranslated (kept in the source language)


class TranslationService:
    def __init__(self, translator: Translator, metrics: Metrics) -> None:
        self._translator = translator
        self._metrics = metrics

    def check_available(self, source_language: str | None, target: str) -> None:
        """503 now, before any transcription, when the LLM is needed but not configured."""
        if not self._translator.configured and not is_same_language(source_language, target):
            raise EngineUnavailable(
                "translation is not configured: set OPENAI_BASE_URL and TRANSLATE_MODEL to an OpenAI-compatible LLM",
                code="translation_not_configured",
            )

    async def translate(self, document: SourceDocument, target: str, *, deadline_s: float) -> TranslationOutcome:
        """Translate `document` into `target`; failures keep the source in the error's body (502/503/504)."""
        try:
            if document.cues is not None:
                outcome = await self._translator.translate_cues(
                    document.cues, target, document.language, deadline_s=deadline_s
                )
                result = TranslationOutcome(joined_text(outcome.cues), outcome.cues, outcome.untranslated)
            else:
                text = await self._translator.translate_text(
                    document.text, target, document.language, deadline_s=deadline_s
                )
                result = TranslationOutcome(text, None, [])
        except (TranslatorNotConfigured, TranslationUnavailable, TranslationTimeout) as exc:
            label = "timeout" if isinstance(exc, TranslationTimeout) else "failed"
            self._metrics.translation_calls.labels(label).inc()
            raise translation_error(exc, document) from exc
        same = is_same_language(document.language, target)
        self._metrics.translation_calls.labels("skipped_same_language" if same else "ok").inc()
        return result

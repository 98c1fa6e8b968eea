"""POST /translate and POST /v1/audio/translations: audio or subtitle/text files → English or Chinese.

Audio is transcribed first (subtitle formats go through the subtitle pipeline, accurate timing where an
aligner is available); .srt/.vtt/.txt uploads are read by the translation service. This router only
parses the form, calls the services and formats the answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from asr_server.api.dependencies import AppServices, ServicesDep, cancel_on_disconnect
from asr_server.api.protocol import (
    TRANSLATION_RESPONSES,
    ResponseFormat,
    TranslatedSegment,
    TranslationJSON,
    TranslationVerboseJSON,
    json_body,
)
from asr_server.api.speaker_form import SpeakerFields, SpeakerForm, check_speaker_fields, speaker_options
from asr_server.api.uploads import (
    SUBTITLE_MEDIA_TYPES,
    CueLayout,
    CueLayoutForm,
    decode_upload,
    read_upload,
    resolve_mode,
)
from asr_server.errors import InvalidField
from asr_server.media.audio import file_extension
from asr_server.services.segments import compression_ratio, verbose_segments
from asr_server.services.subtitles import SubtitleMode
from asr_server.services.translation import (
    TEXT_EXTENSIONS,
    SourceDocument,
    TranslationOutcome,
    parse_text_upload,
)
from asr_server.streaming.protocol import MAX_PROMPT_CHARS
from asr_server.subtitle import segments_from_cues
from asr_server.text.cues import Cue, to_srt, to_vtt
from asr_server.text.languages import language_code, normalize_language
from asr_server.translator import (
    UnsupportedLanguageError,
    normalize_target_language,
)

router = APIRouter(tags=["translation"])

TARGET_NAMES = {"en": "english", "zh": "chinese"}


async def _source_from_audio(
    request: Request,
    services: AppServices,
    file: UploadFile,
    *,
    source_language: str | None,
    prompt: str,
    timed: bool,
    mode: SubtitleMode | None,
    layout: CueLayout,
    speakers: SpeakerFields | None,
) -> tuple[SourceDocument, SubtitleMode | None]:
    audio = await decode_upload(file, services, feature="translation of audio")
    options = await speaker_options(speakers) if speakers is not None else None
    if not timed:
        result = await cancel_on_disconnect(
            request, services.transcription.transcribe(audio, language=source_language, context=prompt)
        )
        return SourceDocument(result.text, None, language_code(result.language), result.duration), None
    resolved = resolve_mode(services, mode)
    if options is not None:  # the cues keep their speakers through translation
        work = services.speakers.run(
            audio,
            language=source_language,
            context=prompt,
            mode=resolved,
            rules=layout.rules(),
            options=options,
            measure_speech=True,
        )
    else:
        work = services.subtitles.run(
            audio, language=source_language, context=prompt, mode=resolved, rules=layout.rules(), measure_speech=True
        )
    timed_result = await cancel_on_disconnect(request, work)
    document = SourceDocument(
        timed_result.text,
        timed_result.cues,
        language_code(timed_result.language),
        timed_result.duration,
        timed_result.transcripts,
        timed_result.speech_frames,
    )
    return document, resolved


async def translate_upload(
    request: Request,
    services: AppServices,
    file: UploadFile,
    *,
    target_language: str,
    source_language: str | None,
    response_format: ResponseFormat,
    prompt: str | None,
    subtitle_mode: SubtitleMode | None,
    layout: CueLayout,
    temperature: float = 0.0,
    speakers: SpeakerFields | None = None,
) -> Response:
    started = time.monotonic()
    if response_format == ResponseFormat.diarized_json:
        raise InvalidField(
            "diarized_json is a transcription format; translate with diarize=true and verbose_json, srt or vtt",
            param="response_format",
        )
    try:
        target = normalize_target_language(target_language)
    except UnsupportedLanguageError as exc:
        raise InvalidField(str(exc), param="target_language") from exc
    source_name = normalize_language(source_language, param="source_language")
    services.translation.check_available(language_code(source_name), target)
    timed = response_format in (ResponseFormat.srt, ResponseFormat.vtt, ResponseFormat.verbose_json)
    ext = file_extension(file.filename)
    labelled = speakers is not None and speakers.diarize and timed and ext not in TEXT_EXTENSIONS
    if speakers is not None:
        if speakers.asked and ext in TEXT_EXTENSIONS:
            raise InvalidField("diarize needs audio, not a text or subtitle file", param="diarize")
        check_speaker_fields(speakers, speakers_wanted=labelled, services=services)
    mode_used: SubtitleMode | None = None
    if ext in TEXT_EXTENSIONS:
        data = await read_upload(file, services.settings.max_upload_bytes)
        document = await asyncio.to_thread(parse_text_upload, data, ext)  # megabytes of text: off the event loop
        document.language = language_code(source_name)
        if timed and document.cues is None:
            raise InvalidField(
                f"response_format {response_format.value!r} needs timings: upload audio, .srt or .vtt",
                param="response_format",
            )
    else:
        document, mode_used = await _source_from_audio(
            request,
            services,
            file,
            source_language=source_name,
            prompt=prompt or "",
            timed=timed,
            mode=subtitle_mode,
            layout=layout,
            speakers=speakers if labelled else None,
        )
    deadline = max(1.0, services.settings.request_timeout - (time.monotonic() - started))
    outcome = await cancel_on_disconnect(request, services.translation.translate(document, target, deadline_s=deadline))
    return _format(document, outcome, target, response_format, mode_used, temperature)


def _translated_segments(document: SourceDocument, cues: list[Cue], temperature: float) -> list[dict[str, object]]:
    """OpenAI segments of the translation. Tokens, avg_logprob and no_speech_prob are the speech
    recognition's for the source segment (the LLM that translated reports none); without audio (a subtitle
    upload) there are no tokens and no_speech_prob is 0.0."""
    source = verbose_segments(document.cues or [], document.transcripts, document.speech_frames, temperature)
    if not document.speech_frames:
        source = [{**segment, "no_speech_prob": 0.0} for segment in source]
    return [  # the translated cues keep the source cues' times
        {**src, "text": seg["text"], "compression_ratio": compression_ratio(seg["text"]), "source_text": src["text"]}
        for seg, src in zip(segments_from_cues(cues), source, strict=True)
    ]


def _format(
    document: SourceDocument,
    outcome: TranslationOutcome,
    target: str,
    response_format: ResponseFormat,
    mode: SubtitleMode | None,
    temperature: float,
) -> Response:
    text, cues, untranslated = outcome.text, outcome.cues, outcome.untranslated
    headers: dict[str, str] = {"X-Target-Language": target}
    if untranslated:
        headers["X-Untranslated-Cues"] = ",".join(str(i) for i in untranslated)
    if mode is not None:
        headers["X-Subtitle-Mode"] = mode.value
    if response_format in SUBTITLE_MEDIA_TYPES and cues is not None:
        body = to_srt(cues) if response_format == ResponseFormat.srt else to_vtt(cues)
        return PlainTextResponse(body, media_type=SUBTITLE_MEDIA_TYPES[response_format], headers=headers)
    if response_format == ResponseFormat.text:
        return PlainTextResponse(text + "\n" if text else "", headers=headers)
    duration = round(document.duration, 3) if document.duration is not None else None
    common = {
        "text": text,
        "target_language": target,
        "source_text": document.text,
        "source_language": document.language,
        "untranslated": untranslated,
    }
    if response_format == ResponseFormat.verbose_json and cues is not None:
        if duration is None:  # a subtitle upload has no audio: its duration is where its last cue ends
            duration = round(max(cue.end for cue in cues), 3) if cues else 0.0
        body: TranslationJSON = TranslationVerboseJSON(
            **common,
            duration=duration,
            language=TARGET_NAMES[target],
            segments=[TranslatedSegment(**s) for s in _translated_segments(document, cues, temperature)],
        )
    else:
        body = TranslationJSON(**common, duration=duration)
    return JSONResponse(json_body(body), headers=headers)


@router.post(
    "/translate",
    summary="Translate audio or a subtitle/text file into English or Chinese",
    responses=TRANSLATION_RESPONSES,
)
async def translate(
    request: Request,
    services: ServicesDep,
    layout: CueLayoutForm,
    speakers: SpeakerForm,
    file: Annotated[UploadFile, File(description="Audio, or an .srt, .vtt or .txt file")],
    target_language: Annotated[str, Form(description="en | zh (also English, Chinese, zh-CN)")] = "en",
    source_language: Annotated[str | None, Form(description="Source language; empty = detect")] = None,
    response_format: Annotated[ResponseFormat, Form()] = ResponseFormat.json,
    prompt: Annotated[str | None, Form(max_length=MAX_PROMPT_CHARS, description="Context for the speech model")] = None,
    subtitle_mode: Annotated[SubtitleMode | None, Form()] = None,
) -> Response:
    return await translate_upload(
        request,
        services,
        file,
        target_language=target_language,
        source_language=source_language,
        response_format=response_format,
        prompt=prompt,
        subtitle_mode=subtitle_mode,
        layout=layout,
        speakers=speakers,
    )


@router.post(
    "/v1/audio/translations",
    summary="Translate audio (OpenAI-compatible; English unless target_language)",
    responses=TRANSLATION_RESPONSES,
)
async def openai_translations(
    request: Request,
    services: ServicesDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str | None, Form(description="Accepted for compatibility")] = None,
    prompt: Annotated[str | None, Form(max_length=MAX_PROMPT_CHARS)] = None,
    response_format: Annotated[ResponseFormat, Form()] = ResponseFormat.json,
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    target_language: Annotated[str, Form(description="Extension: 'zh' for Chinese output")] = "en",
) -> Response:
    return await translate_upload(
        request,
        services,
        file,
        target_language=target_language,
        source_language=None,
        response_format=response_format,
        prompt=prompt,
        subtitle_mode=None,
        layout=CueLayout(),
        temperature=temperature,
    )

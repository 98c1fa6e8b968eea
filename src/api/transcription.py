"""POST /transcribe and POST /v1/audio/transcriptions (one handler, OpenAI's multipart form)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from asr_server.api.dependencies import ServicesDep, cancel_on_disconnect
from asr_server.api.formats import SSE_HEADERS, duration_usage, format_plain, format_timed, sse_event, sse_text
from asr_server.api.long_transcription import stream_long, transcribe_long
from asr_server.api.protocol import (
    TRANSCRIPTION_RESPONSES,
    DiarizedSegment,
    ResponseFormat,
    ServerVadChunking,
    TimestampGranularity,
    TranscriptionDiarizedJSON,
    TranscriptionInclude,
    json_body,
)
from asr_server.api.speaker_form import SpeakerForm, check_speaker_fields, speaker_options
from asr_server.api.uploads import (
    CueLayoutForm,
    needs_whole_audio,
    open_upload,
    resolve_mode,
)
from asr_server.errors import InvalidField, ServiceError
from asr_server.media.long_audio import LongAudio
from asr_server.services.speakers import speaker_segments
from asr_server.services.subtitles import SubtitleMode, TimedTranscription
from asr_server.streaming.protocol import MAX_PROMPT_CHARS
from asr_server.text.languages import normalize_language

router = APIRouter(tags=["transcription"])

TIMED_FORMATS = (ResponseFormat.srt, ResponseFormat.vtt, ResponseFormat.verbose_json, ResponseFormat.diarized_json)
# Formats that can carry speaker labels when diarize=true asks for them (diarized_json always has them).
LABELLED_FORMATS = (ResponseFormat.srt, ResponseFormat.vtt, ResponseFormat.verbose_json)


def parse_chunking_strategy(value: str | None, form: Mapping[str, object]) -> str | ServerVadChunking | None:
    """`chunking_strategy`: "auto", a JSON object, or the object's fields as `chunking_strategy[type]=...`
    (how the OpenAI SDKs send an object in a multipart form)."""
    fields = {
        key[len("chunking_strategy[") : -1]: item
        for key, item in form.items()
        if key.startswith("chunking_strategy[") and key.endswith("]")
    }
    if value is None and not fields:
        return None
    if value is not None and fields:
        raise InvalidField("send chunking_strategy either as a value or as fields, not both", param="chunking_strategy")
    if value is not None and value.strip() == "auto":
        return "auto"
    try:
        raw = json.loads(value) if value is not None else fields
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        return ServerVadChunking.model_validate(raw)
    except ValueError as exc:  # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
        raise InvalidField(
            'chunking_strategy must be "auto" or an object {"type": "server_vad", "prefix_padding_ms", '
            f'"silence_duration_ms", "threshold"}}: {exc}',
            param="chunking_strategy",
        ) from exc


def diarized_segments(result: TimedTranscription) -> list[DiarizedSegment]:
    return [
        DiarizedSegment(
            id=f"seg_{index}", start=round(seg.start, 3), end=round(seg.end, 3), text=seg.text, speaker=seg.speaker
        )
        for index, seg in enumerate(speaker_segments(result.words))
    ]


def format_diarized(result: TimedTranscription, warning: str | None = None) -> Response:
    body = TranscriptionDiarizedJSON(
        duration=round(result.duration, 3),
        text=result.text,
        segments=diarized_segments(result),
        usage=duration_usage(result.duration),
        warnings=[warning] if warning else None,
    )
    return JSONResponse(json_body(body), headers={"X-Subtitle-Mode": result.mode.value})


async def sse_diarized(work: Awaitable[TimedTranscription]) -> AsyncIterator[bytes]:
    """diarized_json with stream=true: a `transcript.text.segment` event per speaker segment, then
    `transcript.text.done`. Speakers are clustered over the whole recording, so segments follow once it is done."""
    try:
        result = await work
    except ServiceError as exc:
        yield sse_event({"type": "error", **exc.envelope()})
        return
    for segment in diarized_segments(result):
        yield sse_event(segment.model_dump(mode="json"))
    yield sse_event({"type": "transcript.text.done", "text": result.text})


@router.post("/transcribe", summary="Transcribe an audio file", responses=TRANSCRIPTION_RESPONSES)
@router.post(
    "/v1/audio/transcriptions",
    summary="Transcribe an audio file (OpenAI-compatible)",
    responses=TRANSCRIPTION_RESPONSES,
)
async def transcribe(
    request: Request,
    services: ServicesDep,
    layout: CueLayoutForm,
    speakers: SpeakerForm,
    file: Annotated[UploadFile, File(description="Audio file: wav, flac, ogg, mp3, m4a, mp4, webm, ...")],
    model: Annotated[str | None, Form(description="Accepted for compatibility; the served model is used.")] = None,
    language: Annotated[str | None, Form(description="ISO-639-1 code ('en', 'zh') or name; empty = detect")] = None,
    prompt: Annotated[
        str | None, Form(max_length=MAX_PROMPT_CHARS, description="Context text that helps the model (names, terms)")
    ] = None,
    response_format: Annotated[ResponseFormat, Form()] = ResponseFormat.json,
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    timestamp_granularities: Annotated[
        list[TimestampGranularity] | None,
        Form(alias="timestamp_granularities[]", description="verbose_json only: segment (default) and/or word"),
    ] = None,
    include: Annotated[
        list[TranscriptionInclude] | None,
        Form(alias="include[]", description="logprobs: the tokens' log-probabilities (response_format json)"),
    ] = None,
    chunking_strategy: Annotated[
        str | None,
        Form(description='"auto" or a server_vad object; accepted, long audio is always cut at quiet points'),
    ] = None,
    subtitle_mode: Annotated[
        SubtitleMode | None,
        Form(description="Timing for srt/vtt/verbose_json: accurate (forced aligner) or fast (heuristic)"),
    ] = None,
    stream: Annotated[
        bool,
        Form(
            description="Server-Sent Events: a delta per finished segment (json/text), speaker segments (diarized_json)"
        ),
    ] = False,
) -> Response:
    if stream and response_format not in (ResponseFormat.json, ResponseFormat.text, ResponseFormat.diarized_json):
        raise InvalidField("stream=true works with response_format json, text or diarized_json", param="stream")
    labelled = response_format == ResponseFormat.diarized_json or (
        speakers.diarize and response_format in LABELLED_FORMATS
    )
    check_speaker_fields(speakers, speakers_wanted=labelled, services=services)
    if timestamp_granularities and response_format != ResponseFormat.verbose_json:
        raise InvalidField(
            "timestamp_granularities[] needs response_format=verbose_json", param="timestamp_granularities"
        )
    logprobs = TranscriptionInclude.logprobs in (include or [])
    if logprobs and response_format != ResponseFormat.json:
        raise InvalidField("include[]=logprobs needs response_format=json", param="include")
    parse_chunking_strategy(chunking_strategy, await request.form())
    language_name = normalize_language(language)
    timed = response_format in TIMED_FORMATS
    if timed:
        mode = resolve_mode(services, subtitle_mode)
        rules = layout.rules()
    audio = await open_upload(file, services)
    if isinstance(audio, LongAudio):  # past LONG_AUDIO_SECONDS: piece by piece
        if labelled:
            audio.close()
            raise needs_whole_audio(services, "speaker labelling")
        if stream:
            return stream_long(services, audio, language=language_name, context=prompt or "", logprobs=logprobs)
        return await transcribe_long(
            request,
            services,
            audio,
            response_format=response_format,
            language=language_name,
            context=prompt or "",
            mode=mode if timed else None,
            rules=rules if timed else None,
            granularities=timestamp_granularities or [TimestampGranularity.segment],
            temperature=temperature,
            logprobs=logprobs,
            filename=file.filename,
        )
    options = await speaker_options(speakers) if labelled else None
    if stream and options is not None:
        work = services.speakers.run(
            audio, language=language_name, context=prompt or "", mode=mode, rules=rules, options=options
        )
        return StreamingResponse(
            sse_diarized(work),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    if stream:
        return StreamingResponse(
            sse_text(
                services.transcription.transcribe_progressively(audio, language=language_name, context=prompt or ""),
                logprobs=logprobs,
            ),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    if not timed:
        result = await cancel_on_disconnect(
            request, services.transcription.transcribe(audio, language=language_name, context=prompt or "")
        )
        return format_plain(result, response_format, logprobs=logprobs, warning=audio.warning)
    granularities = timestamp_granularities or [TimestampGranularity.segment]
    measure_speech = response_format == ResponseFormat.verbose_json and TimestampGranularity.segment in granularities
    if options is not None:
        work = services.speakers.run(
            audio,
            language=language_name,
            context=prompt or "",
            mode=mode,
            rules=rules,
            options=options,
            measure_speech=measure_speech,
        )
    else:
        work = services.subtitles.run(
            audio, language=language_name, context=prompt or "", mode=mode, rules=rules, measure_speech=measure_speech
        )
    timed_result = await cancel_on_disconnect(request, work)
    if response_format == ResponseFormat.diarized_json:
        return format_diarized(timed_result, warning=audio.warning)
    return format_timed(timed_result, response_format, granularities, temperature, warning=audio.warning)

"""What the REST routes share: reading and decoding an upload, the prompt limit, cue-layout rules, the subtitle
mode and the subtitle media types. Routers import these from here, never from one another.
"""

from __future__ import annotations

import asyncio

from fastapi import UploadFile
from loguru import logger

from asr_server.api.dependencies import AppServices
from asr_server.api.middleware import note_audio_warning
from asr_server.api.protocol import ResponseFormat
from asr_server.errors import InvalidField, PayloadTooLarge
from asr_server.media.audio import DecodedAudio, decode_audio
from asr_server.services.subtitles import SubtitleMode
from asr_server.subtitle import CueRules

SUBTITLE_MEDIA_TYPES = {ResponseFormat.srt: "application/x-subrip", ResponseFormat.vtt: "text/vtt"}




async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the upload is larger than {max_bytes / 1024 / 1024:g} MiB (MAX_UPLOAD_MB)", param="file"
        )
    return data


async def decode_upload(file: UploadFile, services: AppServices) -> DecodedAudio:
    settings = services.settings
    data = await read_upload(file, settings.max_upload_bytes)
    audio = await asyncio.to_thread(decode_audio, data, file.filename, max_seconds=settings.max_audio_seconds)
    if audio.warning:  # transcribed anyway (part of the speech is better than none), but never silently
        logger.warning("upload {!r}: {}", file.filename, audio.warning)
        note_audio_warning(audio.warning)
    return audio


def cue_rules(
    max_line_width: int | None, max_lines: int | None, max_cue_duration: float | None, max_cps: float | None
) -> CueRules:
    overrides = {
        name: value
        for name, value in {
            "max_line_width": max_line_width,
            "max_lines": max_lines,
            "max_duration": max_cue_duration,
            "max_cps": max_cps,
        }.items()
        if value is not None
    }
    if max_cps is not None:
        # CJK is read at roughly half the characters per second of Latin text.
        overrides["max_cps_cjk"] = max_cps * CueRules.max_cps_cjk / CueRules.max_cps
    if max_cue_duration is not None:
        overrides["min_duration"] = min(CueRules.min_duration, max_cue_duration)
    try:
        return CueRules(**overrides)
    except ValueError as exc:
        raise InvalidField(str(exc)) from exc


def resolve_mode(services: AppServices, requested: SubtitleMode | None) -> SubtitleMode:
    pipeline = services.subtitles
    if requested is None:
        return pipeline.default_mode()
    if requested == SubtitleMode.accurate and not pipeline.aligner_available:
        raise InvalidField(
            "subtitle_mode 'accurate' needs a forced aligner (FORCED_ALIGNER_ID) and an engine that supports it; "
            "use subtitle_mode=fast",
            param="subtitle_mode",
        )
    return requested

"""What the REST routes share: reading and decoding an upload, the prompt limit, cue-layout rules, the subtitle
mode and the subtitle media types. Routers import these from here, never from one another.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Form, UploadFile
from loguru import logger
from pydantic import BaseModel, Field

from asr_server.api.dependencies import AppServices
from asr_server.api.middleware import note_audio_warning
from asr_server.api.protocol import ResponseFormat
from asr_server.errors import InvalidField, PayloadTooLarge
from asr_server.media.audio import DecodedAudio
from asr_server.media.long_audio import LongAudio, open_audio
from asr_server.services.subtitles import SubtitleMode
from asr_server.subtitle import CueRules

SUBTITLE_MEDIA_TYPES = {ResponseFormat.srt: "application/x-subrip", ResponseFormat.vtt: "text/vtt"}


# Text and subtitle uploads are read whole (and translated in batches): far more than a film's subtitles.
MAX_TEXT_UPLOAD_BYTES = 32 * 1024 * 1024


async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    """A text upload's bytes: at most `max_bytes`, and never more than MAX_TEXT_UPLOAD_BYTES (413)."""
    max_bytes = min(max_bytes, MAX_TEXT_UPLOAD_BYTES)
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the text upload is larger than {max_bytes / 1024 / 1024:g} MiB", param="file")
    return data


def check_upload_size(file: UploadFile, max_bytes: int) -> None:
    if file.size is not None and file.size > max_bytes:
        raise PayloadTooLarge(
            f"the upload is larger than {max_bytes / 1024 / 1024:g} MiB (MAX_UPLOAD_MB)", param="file"
        )


async def open_upload(file: UploadFile, services: AppServices) -> DecodedAudio | LongAudio:
    """The upload decoded whole when it holds at most LONG_AUDIO_SECONDS, else an open `LongAudio` (the caller
    closes it). Read from the spooled file, never into memory whole."""
    settings = services.settings
    check_upload_size(file, settings.max_upload_bytes)
    audio = await asyncio.to_thread(
        open_audio,
        file.file,
        file.filename,
        max_seconds=settings.max_audio_seconds,
        whole_seconds=settings.long_audio_seconds,
    )
    if isinstance(audio, DecodedAudio):
        note_warning(file.filename, audio.warning)
    return audio


def note_warning(filename: str | None, warning: str | None) -> None:
    if warning:  # transcribed anyway (part of the speech is better than none), but never silently
        logger.warning("upload {!r}: {}", filename, warning)
        note_audio_warning(warning)


async def decode_upload(file: UploadFile, services: AppServices, feature: str = "this request") -> DecodedAudio:
    """The upload decoded whole, for features that need all of it at once (speakers, translation): 413 past
    LONG_AUDIO_SECONDS, naming what does take longer audio."""
    audio = await open_upload(file, services)
    if isinstance(audio, LongAudio):
        audio.close()
        raise needs_whole_audio(services, feature)
    return audio


def needs_whole_audio(services: AppServices, feature: str) -> PayloadTooLarge:
    """The 413 for a `feature` that needs the whole recording at once, given audio past LONG_AUDIO_SECONDS."""
    limit = services.settings.long_audio_seconds
    return PayloadTooLarge(
        f"{feature} takes audio up to {limit:g} s (LONG_AUDIO_SECONDS): it needs the whole recording at once; "
        "longer audio is transcribed without it by /v1/audio/transcriptions, or as a job (POST /v1/jobs)",
        param="file",
        code="audio_too_long",
    )


class CueLayout(BaseModel):
    """The cue-layout fields of the forms that make subtitles (/transcribe, /v1/audio/transcriptions, /translate):
    defined once, validated once. Unset fields keep the broadcast defaults of `CueRules`."""

    max_line_width: int | None = Field(default=None, ge=2, le=200, description="Display columns per line")
    max_lines: int | None = Field(default=None, ge=1, le=10, description="Lines per subtitle cue")
    max_cue_duration: float | None = Field(default=None, gt=0.5, le=60, description="Seconds a cue may last")
    max_cps: float | None = Field(default=None, gt=1, le=100, description="Reading speed ceiling, chars/s")

    def rules(self) -> CueRules:
        overrides: dict[str, float] = {
            name: value
            for name, value in {
                "max_line_width": self.max_line_width,
                "max_lines": self.max_lines,
                "max_duration": self.max_cue_duration,
                "max_cps": self.max_cps,
            }.items()
            if value is not None
        }
        if self.max_cps is not None:
            # CJK is read at roughly half the characters per second of Latin text.
            overrides["max_cps_cjk"] = self.max_cps * CueRules.max_cps_cjk / CueRules.max_cps
        if self.max_cue_duration is not None:
            overrides["min_duration"] = min(CueRules.min_duration, self.max_cue_duration)
        try:
            return CueRules(**overrides)
        except ValueError as exc:
            raise InvalidField(str(exc)) from exc


def _layout_field(name: str) -> Any:
    info = CueLayout.model_fields[name]
    limits = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le") if getattr(m, k, None) is not None}
    return Form(description=info.description, **limits)


def cue_layout_form(
    max_line_width: Annotated[int | None, _layout_field("max_line_width")] = None,
    max_lines: Annotated[int | None, _layout_field("max_lines")] = None,
    max_cue_duration: Annotated[float | None, _layout_field("max_cue_duration")] = None,
    max_cps: Annotated[float | None, _layout_field("max_cps")] = None,
) -> CueLayout:
    """The form fields of `CueLayout` (their limits and descriptions come from the model)."""
    return CueLayout(
        max_line_width=max_line_width, max_lines=max_lines, max_cue_duration=max_cue_duration, max_cps=max_cps
    )


CueLayoutForm = Annotated[CueLayout, Depends(cue_layout_form)]


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

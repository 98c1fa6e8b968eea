"""The speaker fields the REST forms share (/transcribe, /v1/audio/transcriptions, /translate): `diarize`,
`known_speaker_names[]` with `known_speaker_references[]` (OpenAI's names and data-URL clips) and `num_speakers`.
Validated here, before any model work: a bad field is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated

import numpy as np
from fastapi import Depends, Form
from pydantic import BaseModel

from asr_server.api.dependencies import AppServices
from asr_server.errors import InvalidField, PayloadTooLarge, ServiceError
from asr_server.media.audio import decode_audio
from asr_server.services.speakers import SpeakerOptions

MAX_KNOWN_SPEAKERS = 4  # OpenAI's limit
REFERENCE_MIN_SECONDS = 2.0  # OpenAI's bounds for a reference clip
REFERENCE_MAX_SECONDS = 10.0
REFERENCE_MAX_BYTES = 4 * 2**20  # a 10 s clip is far smaller in any format
NAMES = "known_speaker_names"
REFERENCES = "known_speaker_references"


class SpeakerFields(BaseModel):
    diarize: bool = False
    names: list[str] = []
    references: list[str] = []
    num_speakers: int | None = None

    @property
    def asked(self) -> bool:
        return self.diarize or bool(self.names or self.references) or self.num_speakers is not None


def speaker_form(
    diarize: Annotated[
        bool,
        Form(description="Label who speaks in verbose_json (segments, words), srt ([A] ...) and vtt (<v A>)"),
    ] = False,
    known_speaker_names: Annotated[
        list[str] | None,
        Form(alias="known_speaker_names[]", description="Up to 4 names, one per known_speaker_references[] clip"),
    ] = None,
    known_speaker_references: Annotated[
        list[str] | None,
        Form(alias="known_speaker_references[]", description="Data URLs of 2-10 s clips of each known speaker"),
    ] = None,
    num_speakers: Annotated[
        int | None, Form(ge=1, le=26, description="The number of speakers, when known (diarization)")
    ] = None,
) -> SpeakerFields:
    return SpeakerFields(
        diarize=diarize,
        names=known_speaker_names or [],
        references=known_speaker_references or [],
        num_speakers=num_speakers,
    )


SpeakerForm = Annotated[SpeakerFields, Depends(speaker_form)]


def check_speaker_fields(fields: SpeakerFields, *, speakers_wanted: bool, services: AppServices) -> None:
    """The fields' rules that need no decoding; then whether diarization can run here (a 503 if not)."""
    if not speakers_wanted:
        if fields.asked:
            param = "diarize" if fields.diarize else (NAMES if fields.names else REFERENCES)
            if fields.num_speakers is not None and not (fields.diarize or fields.names or fields.references):
                param = "num_speakers"
            raise InvalidField(
                f"{param} needs speaker labels: response_format=diarized_json, or diarize=true with "
                "verbose_json, srt or vtt",
                param=param,
            )
        return
    if len(fields.names) != len(fields.references):
        param = NAMES if len(fields.names) > len(fields.references) else REFERENCES
        raise InvalidField(
            f"{len(fields.names)} known_speaker_names[] but {len(fields.references)} known_speaker_references[]: "
            "give one reference clip per name",
            param=param,
        )
    if len(fields.names) > MAX_KNOWN_SPEAKERS:
        raise InvalidField(f"at most {MAX_KNOWN_SPEAKERS} known speakers", param=NAMES)
    cleaned = [name.strip() for name in fields.names]
    if any(not name or len(name) > 64 for name in cleaned):
        raise InvalidField("each known speaker name must be 1-64 characters", param=NAMES)
    if len(set(cleaned)) != len(cleaned):
        raise InvalidField("known speaker names must differ", param=NAMES)
    services.speakers.ensure_available()


def _data_url_bytes(url: str, index: int) -> tuple[bytes, str | None]:
    """The bytes of a `data:[<media type>][;base64],<data>` URL, and a file name hinting its format."""
    where = f"known_speaker_references[{index}]"
    head, comma, payload = url.strip().partition(",")
    if not head.startswith("data:") or not comma:
        raise InvalidField(f"{where} must be a data URL (data:audio/wav;base64,...)", param=REFERENCES)
    media_type = head[5:].split(";")[0].strip().lower()
    if ";base64" not in head:
        raise InvalidField(f"{where} must be base64-encoded (data:audio/...;base64,...)", param=REFERENCES)
    if len(payload) > REFERENCE_MAX_BYTES * 4 // 3 + 4:
        raise InvalidField(f"{where} is larger than {REFERENCE_MAX_BYTES // 2**20} MiB", param=REFERENCES)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidField(f"{where} is not valid base64: {exc}", param=REFERENCES) from exc
    subtype = media_type.partition("/")[2] if media_type.startswith(("audio/", "video/")) else ""
    extension = {"mpeg": "mp3", "x-wav": "wav", "wave": "wav", "x-flac": "flac", "mp4": "m4a"}.get(subtype, subtype)
    return data, f"reference.{extension}" if extension else None


def _reference_audio(url: str, index: int) -> np.ndarray:
    where = f"known_speaker_references[{index}]"
    data, filename = _data_url_bytes(url, index)
    bounds = f"a reference clip must be {REFERENCE_MIN_SECONDS:g}-{REFERENCE_MAX_SECONDS:g} s"
    try:
        audio = decode_audio(data, filename, max_seconds=REFERENCE_MAX_SECONDS)
    except PayloadTooLarge as exc:
        raise InvalidField(f"{where} is longer than {REFERENCE_MAX_SECONDS:g} s; {bounds}", param=REFERENCES) from exc
    except ServiceError as exc:
        raise InvalidField(f"{where}: {exc.message}", param=REFERENCES) from exc
    if audio.duration < REFERENCE_MIN_SECONDS:
        raise InvalidField(f"{where} is {audio.duration:.1f} s long; {bounds}", param=REFERENCES)
    return audio.samples


async def speaker_options(fields: SpeakerFields) -> SpeakerOptions:
    """Decode the reference clips (checked by `check_speaker_fields` first)."""
    clips = await asyncio.gather(
        *(asyncio.to_thread(_reference_audio, url, index) for index, url in enumerate(fields.references))
    )
    names = [name.strip() for name in fields.names]
    return SpeakerOptions(references=dict(zip(names, clips, strict=True)), num_speakers=fields.num_speakers)

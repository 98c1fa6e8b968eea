"""Audio decoding: any container/codec FFmpeg knows → 16 kHz mono float32.

libsndfile (soundfile) reads WAV/FLAC/OGG/MP3 in ~0.1 ms; everything else goes through PyAV (FFmpeg,
~2.5 ms of container set-up even for a tiny file). soxr resamples. Every failure becomes a 4xx `ServiceError`, so a
bad upload can never reach the model or surface as a 500.

A small file can declare hours of 8-channel 384 kHz audio (silence compresses to almost nothing), so decoding
never holds the source whole: limits are checked on the container's metadata first, then blocks are decoded,
downmixed and resampled one at a time into the 16 kHz mono output (see `audio_sink`), which is cut off the moment
it passes MAX_AUDIO_SECONDS. Peak memory is the accepted output plus a block.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

from asr_server.errors import AudioDecodeError, UnsupportedMediaType
from asr_server.media import SAMPLE_RATE
from asr_server.media.audio_sink import DecodeLimits, MonoSink, release_free_memory, too_long

__all__ = ["DecodeLimits", "DecodedAudio", "decode_audio", "file_extension", "pcm16_to_float", "resample"]

# Extensions OpenAI documents for uploads; anything else that FFmpeg still decodes is accepted too.
KNOWN_AUDIO_EXTENSIONS = frozenset(
    {"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "oga", "opus", "wav", "webm", "aac", "wma", "mkv"}
)
# Codec priming and padding make decoded and declared lengths differ a little in whole files.
LOSS_TOLERANCE_S = 0.2
LOSS_TOLERANCE_FRACTION = 0.02
# Less than this decoded from a file that declared more is a broken file, not speech to transcribe.
MIN_DECODED_SECONDS = 0.1
# A declared length may be estimated (MP3 without a Xing header); refuse before decoding only past this margin.
DECLARED_SLACK_S = 1.0
# Damaged packets skipped before the file is given up as not audio at all.
MAX_BAD_PACKETS = 1000
# libsndfile's header log: "data : 64000 (should be 156)" when a chunk claims more than the file holds.
_SHORT_CHUNK = re.compile(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_CHUNK_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)  # written by encoders that stream to a pipe
_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX when the header has no length


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, 16 kHz
    sample_rate: int = SAMPLE_RATE
    declared_duration: float | None = None
    """Seconds the container's header declares, when it declares a length."""
    warning: str | None = None
    """Human-readable note that audio was lost (a truncated or damaged file); None when the file decoded whole."""

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def file_extension(filename: str | None) -> str:
    """The lower-cased extension of an upload's name, "" when it has none."""
    if not filename or "." not in filename:
        return ""
    return filename.rsplit(".", 1)[-1].lower()


def decode_audio(
    data: bytes, filename: str | None = None, *, max_seconds: float | None = None, limits: DecodeLimits | None = None
) -> DecodedAudio:
    """Decode an uploaded file. Raises AudioDecodeError / UnsupportedMediaType / PayloadTooLarge.

    `max_seconds` bounds the decoded audio (413 `audio_too_long`), checked on the header and while decoding.
    """
    if not data:
        raise AudioDecodeError("the uploaded file is empty", param="file", code="empty_file")
    limits = limits or DecodeLimits()
    try:
        audio = _decode_with_soundfile(data, max_seconds, limits)
        if audio is None:
            audio = _decode_with_ffmpeg(data, file_extension(filename), max_seconds, limits)
    finally:
        # Decoders free their blocks into malloc's arenas; give them back so RSS returns to idle.
        release_free_memory()
    return audio


def _decode_with_soundfile(data: bytes, max_seconds: float | None, limits: DecodeLimits) -> DecodedAudio | None:
    """Decode with libsndfile when it knows the format; None means "let FFmpeg try"."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            if sound.samplerate <= 0 or sound.frames <= 0:
                return None
            limits.check(sound.channels, sound.samplerate)
            declared = _soundfile_declared_seconds(sound)
            # What the file holds (libsndfile's clamped count) bounds the work; the header's claim only the warning.
            present = None if sound.frames >= _UNKNOWN_FRAMES else sound.frames / sound.samplerate
            _check_declared(present, max_seconds)
            sink = MonoSink(max_seconds, expected_seconds=present)
            block = np.empty((limits.block_frames(sound.samplerate), sound.channels), dtype=np.float32)
            while True:
                read = sound.read(out=block)
                if len(read) == 0:
                    break
                sink.add(read.mean(axis=1) if sound.channels > 1 else read[:, 0], sound.samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None  # unknown to libsndfile, or damaged mid-stream: FFmpeg skips bad packets and reports them
    return _finish(sink, declared, bad_packets=0)


def _soundfile_declared_seconds(sound: object) -> float | None:
    """The header's length: libsndfile clamps `frames` to what a truncated WAV/AIFF holds, but logs the claim."""
    frames, rate = sound.frames, sound.samplerate  # type: ignore[attr-defined]
    if frames >= _UNKNOWN_FRAMES:
        return None
    for claimed, present in _SHORT_CHUNK.findall(sound.extra_info):  # type: ignore[attr-defined]
        if int(claimed) in _UNKNOWN_CHUNK_SIZES:
            return None
        if int(present) > 0:
            return frames / rate * int(claimed) / int(present)
    return frames / rate


def _decode_with_ffmpeg(data: bytes, ext: str, max_seconds: float | None, limits: DecodeLimits) -> DecodedAudio:
    import av

    bad_packets = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream", param="file", code="no_audio_stream")
            stream = container.streams.audio[0]
            limits.check(stream.codec_context.channels, stream.codec_context.sample_rate or SAMPLE_RATE)
            declared = _ffmpeg_declared_seconds(container, stream)
            _check_declared(declared, max_seconds)
            sink = MonoSink(max_seconds, expected_seconds=declared)
            # Only the sample format changes (planar float); the downmix is a plain mean, as for libsndfile.
            converter = av.AudioResampler(format="fltp")
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    bad_packets += 1
                    if bad_packets > MAX_BAD_PACKETS:
                        raise
                    continue
                for frame in frames:
                    limits.check(len(frame.layout.channels), frame.sample_rate)
                    for planar in converter.resample(frame):
                        sink.add(planar.to_ndarray().mean(axis=0, dtype=np.float32), planar.sample_rate)
    except av.error.FFmpegError as exc:
        if ext and ext not in KNOWN_AUDIO_EXTENSIONS:
            raise UnsupportedMediaType(
                f"unsupported file format '.{ext}'; send audio such as " + ", ".join(sorted(KNOWN_AUDIO_EXTENSIONS)),
                param="file",
            ) from exc
        raise AudioDecodeError(f"could not decode the audio: {exc}", param="file") from exc
    except (ValueError, IndexError, EOFError, OSError) as exc:
        raise AudioDecodeError(f"could not decode the audio: {exc}", param="file") from exc
    return _finish(sink, declared, bad_packets)


def _ffmpeg_declared_seconds(container: object, stream: object) -> float | None:
    duration, time_base = stream.duration, stream.time_base  # type: ignore[attr-defined]
    if duration is not None and duration > 0 and time_base:
        return float(duration * time_base)
    total = container.duration  # type: ignore[attr-defined]  # microseconds (AV_TIME_BASE)
    return total / 1_000_000 if total is not None and total > 0 else None


def _check_declared(declared: float | None, max_seconds: float | None) -> None:
    if declared is not None and max_seconds is not None and declared > max_seconds + DECLARED_SLACK_S:
        raise too_long(max_seconds)


def _finish(sink: MonoSink, declared: float | None, bad_packets: int) -> DecodedAudio:
    samples = sink.finish()
    if samples.size == 0:
        raise AudioDecodeError("the file contains no audio samples", param="file", code="empty_audio")
    decoded = samples.size / SAMPLE_RATE
    notes = []
    if declared is not None and declared - decoded > max(LOSS_TOLERANCE_S, LOSS_TOLERANCE_FRACTION * declared):
        notes.append(f"only {decoded:.2f} s of the {declared:.2f} s the file declares could be decoded")
    if bad_packets:
        notes.append(f"{bad_packets} damaged packet{'s' if bad_packets > 1 else ''} skipped")
    if notes and decoded < MIN_DECODED_SECONDS:
        raise AudioDecodeError(
            f"the file is truncated or damaged: {'; '.join(notes)}", param="file", code="invalid_audio"
        )
    warning = f"the audio is truncated or damaged: {'; '.join(notes)}" if notes else None
    return DecodedAudio(samples=samples, declared_duration=declared, warning=warning)


def resample(samples: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    if source_rate == target_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples, source_rate, target_rate).astype(np.float32, copy=False)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes → float32 in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0

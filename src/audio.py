"""Audio decoding: any container/codec FFmpeg knows → 16 kHz mono float32.

libsndfile (soundfile) reads WAV/FLAC/OGG in ~0.1 ms; everything else goes through PyAV (FFmpeg,
~2.5 ms of container set-up even for a tiny file). soxr resamples. Every failure becomes a 4xx `ServiceError`, so a
bad upload can never reach the model or surface as a 500.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from asr_server.errors import AudioDecodeError, PayloadTooLarge, UnsupportedMediaType

SAMPLE_RATE = 16_000
# Extensions OpenAI documents for uploads; anything else that FFmpeg still decodes is accepted too.
KNOWN_AUDIO_EXTENSIONS = frozenset(
    {"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "oga", "opus", "wav", "webm", "aac", "wma", "mkv"}
)


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, 16 kHz
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def _extension(filename: str | None) -> str:
    if not filename or "." not in filename:
        return ""
    return filename.rsplit(".", 1)[-1].lower()


def decode_audio(data: bytes, filename: str | None = None, *, max_seconds: float | None = None) -> DecodedAudio:
    """Decode an uploaded file. Raises AudioDecodeError / UnsupportedMediaType / PayloadTooLarge."""
    import av

    if not data:
        raise AudioDecodeError("the uploaded file is empty", param="file", code="empty_file")
    ext = _extension(filename)
    fast = _decode_with_soundfile(data, max_seconds)
    if fast is not None:
        return fast
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream", param="file", code="no_audio_stream")
            stream = container.streams.audio[0]
            source_rate = stream.codec_context.sample_rate or SAMPLE_RATE
            # Downmix to mono float at the source rate; soxr does the (better) rate conversion.
            resampler = av.AudioResampler(format="flt", layout="mono", rate=source_rate)
            limit = None if max_seconds is None else int((max_seconds + 1.0) * source_rate)
            pieces: list[np.ndarray] = []
            total = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    pieces.append(chunk)
                    total += len(chunk)
                if limit is not None and total > limit:
                    raise _too_long(max_seconds)
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except (AudioDecodeError, PayloadTooLarge):
        raise
    except (av.error.FFmpegError, ValueError, IndexError, EOFError, OSError) as exc:
        if ext and ext not in KNOWN_AUDIO_EXTENSIONS:
            raise UnsupportedMediaType(
                f"unsupported file format '.{ext}'; send audio such as "
                + ", ".join(sorted(KNOWN_AUDIO_EXTENSIONS)),
                param="file",
            ) from exc
        raise AudioDecodeError(f"could not decode the audio: {exc}", param="file") from exc

    samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    samples = resample(samples, source_rate, SAMPLE_RATE)
    if samples.size == 0:
        raise AudioDecodeError("the file contains no audio samples", param="file", code="empty_audio")
    if not np.all(np.isfinite(samples)):
        raise AudioDecodeError("the audio contains invalid (NaN/inf) samples", param="file")
    audio = DecodedAudio(samples=samples)
    if max_seconds is not None and audio.duration > max_seconds:
        raise _too_long(max_seconds)
    return audio


def _decode_with_soundfile(data: bytes, max_seconds: float | None) -> DecodedAudio | None:
    """Decode with libsndfile when it knows the format; None means "let FFmpeg try"."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            if sound.frames <= 0 or sound.samplerate <= 0:
                return None
            if max_seconds is not None and sound.frames / sound.samplerate > max_seconds:
                raise _too_long(max_seconds)
            samples = sound.read(dtype="float32", always_2d=True)
            rate = sound.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    mono = resample(np.ascontiguousarray(mono, dtype=np.float32), rate, SAMPLE_RATE)
    if mono.size == 0 or not np.all(np.isfinite(mono)):
        return None  # let the thorough path produce the precise error
    return DecodedAudio(samples=mono)


def resample(samples: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    if source_rate == target_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples, source_rate, target_rate).astype(np.float32, copy=False)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes → float32 in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def _too_long(max_seconds: float | None) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the audio is longer than the {max_seconds:g} s this server accepts (MAX_AUDIO_SECONDS)",
        param="file",
        code="audio_too_long",
    )

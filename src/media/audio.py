"""Audio decoding: any container/codec FFmpeg knows → 16 kHz mono float32, whole or progressively.

libsndfile (soundfile) reads WAV/FLAC/OGG/MP3 in ~0.1 ms; everything else goes through PyAV (FFmpeg,
~2.5 ms of container set-up even for a tiny file). soxr resamples. Every failure becomes a 4xx `ServiceError`, so a
bad upload can never reach the model or surface as a 500.

A small file can declare hours of 8-channel 384 kHz audio (silence compresses to almost nothing), so decoding
never holds the source whole: limits are checked on the container's metadata first, then blocks are decoded,
downmixed and resampled one at a time into 16 kHz mono blocks (see `audio_sink`), cut off the moment the output
passes MAX_AUDIO_SECONDS. One decoder (`_decoded_blocks`) has two consumers: `decode_audio` gathers its blocks
(peak memory is the accepted output plus a block) and `open_audio_stream` hands them on as they come (peak memory
is a block, whatever the file's length).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from asr_server.errors import AudioDecodeError, UnsupportedMediaType
from asr_server.media import SAMPLE_RATE
from asr_server.media.audio_sink import DecodeLimits, MonoResampler, SampleBuffer, release_free_memory, too_long

__all__ = [
    "AudioStream",
    "DecodeLimits",
    "DecodedAudio",
    "decode_audio",
    "file_extension",
    "open_audio_stream",
    "pcm16_to_float",
    "resample",
]

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
        raise _empty_file()
    header = _Header()
    output: SampleBuffer | None = None
    try:
        blocks = _decoded_blocks(
            io.BytesIO(data), file_extension(filename), max_seconds, limits or DecodeLimits(), header
        )
        for block in blocks:
            if block is None:  # a decoder opened: a second one (FFmpeg after libsndfile gave up) starts afresh
                output = None
                output = SampleBuffer(max_seconds, expected_seconds=header.expected)
            else:
                output.append(block)  # type: ignore[union-attr]  # always opened first
        samples = output.finish()  # type: ignore[union-attr]
        warning = _loss_warning(samples.size, header)
        return DecodedAudio(samples=samples, declared_duration=header.declared, warning=warning)
    except BaseException:
        if output is not None:
            output.discard()
        raise
    finally:
        # Decoders free their blocks into malloc's arenas; give them back so RSS returns to idle.
        release_free_memory()


def open_audio_stream(
    source: bytes | BinaryIO | Path,
    filename: str | None = None,
    *,
    max_seconds: float | None = None,
    limits: DecodeLimits | None = None,
) -> AudioStream:
    """Open a file for progressive decoding: an `AudioStream` of 16 kHz mono float32 blocks (at most about a
    second each), read from the source as they are needed.

    `source` is the file's bytes, a seekable binary file object (read from its first byte, whatever its position,
    and left open) or a path (`filename` defaults to its name). Raises what `decode_audio` raises: on opening for
    what the header tells (empty file, not audio, channels, rate, a declared length past `max_seconds`), while
    iterating for what decoding finds (the output passing `max_seconds`, a file with no audio in it).
    """
    owned: BinaryIO | None = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise _empty_file()
        file: BinaryIO = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        filename = filename if filename is not None else path.name
        file = owned = path.open("rb")
    else:
        file = source
        if not file.seekable():
            raise ValueError("open_audio_stream needs a seekable file object (both decoders seek)")
    try:
        size = file.seek(0, io.SEEK_END)
        file.seek(0)
        if size == 0:
            raise _empty_file()
        return AudioStream(file, file_extension(filename), max_seconds, limits or DecodeLimits(), owned)
    except BaseException:
        if owned is not None:
            owned.close()
        raise


class AudioStream:
    """Decoded audio, block by block: iterate for 16 kHz mono float32 blocks; use as a context manager.

    `declared_duration` is known once opened (the header's length, as `DecodedAudio.declared_duration`),
    `decoded_seconds` counts what was handed out, and `warning` is set once the blocks are exhausted (a truncated or
    damaged file, as `DecodedAudio.warning`). Iterating raises what `decode_audio` raises while decoding.

    Where libsndfile gives up midway through a file (a damaged FLAC or MP3, a FLAC written to a pipe), `decode_audio`
    decodes the whole file again with FFmpeg; a stream cannot take back the blocks it gave, so it decodes again with
    FFmpeg and continues after the samples already given. For lossless formats that is the same audio; for MP3
    the two decoders' outputs may differ slightly, so only there the joined blocks may differ from `decode_audio`.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self, file: BinaryIO, ext: str, max_seconds: float | None, limits: DecodeLimits, owned: BinaryIO | None
    ) -> None:
        self._owned = owned
        self._header = _Header()
        self._blocks: _Blocks | None = _decoded_blocks(file, ext, max_seconds, limits, self._header)
        self._samples = 0
        self._skip = 0  # samples a second decoder repeats (already given by the first)
        self._exhausted = False
        self.warning: str | None = None
        """Set once every block was read: what was lost (a truncated or damaged file), None when nothing was."""
        try:
            next(self._blocks)  # the header's checks
        except BaseException:
            self.close()
            raise

    @property
    def declared_duration(self) -> float | None:
        """Seconds the container's header declares, when it declares a length (FFmpeg's reading of it once
        FFmpeg took over from libsndfile)."""
        return self._header.declared

    @property
    def decoded_seconds(self) -> float:
        """Seconds of 16 kHz audio handed out so far."""
        return self._samples / SAMPLE_RATE

    @property
    def exhausted(self) -> bool:
        """Every block was read (and `warning` is final)."""
        return self._exhausted

    def __iter__(self) -> AudioStream:
        return self

    def __next__(self) -> np.ndarray:
        while self._blocks is not None:
            try:
                block = next(self._blocks)
            except StopIteration:
                self._end()
                break
            except BaseException:
                self.close()
                raise
            if block is None:  # FFmpeg took over from libsndfile, from the file's start
                self._skip = self._samples
                continue
            if self._skip:
                if block.size <= self._skip:
                    self._skip -= block.size
                    continue
                block, self._skip = block[self._skip :].copy(), 0
            self._samples += block.size
            return block
        raise StopIteration

    def to_decoded(self, samples: np.ndarray) -> DecodedAudio:
        """`samples` (the stream's blocks, joined) with the stream's declared length and warning."""
        if not self._exhausted:
            raise RuntimeError("the stream's warning is known only once every block was read")
        return DecodedAudio(samples=samples, declared_duration=self.declared_duration, warning=self.warning)

    def close(self) -> None:
        """Stop decoding and release the decoder (and the file, when the stream opened it). Idempotent."""
        blocks, self._blocks = self._blocks, None
        if blocks is None:
            return
        try:
            blocks.close()
        finally:
            if self._owned is not None:
                self._owned.close()
            release_free_memory()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _end(self) -> None:
        self.close()
        self.warning = _loss_warning(self._samples, self._header)  # raises for a file with nothing in it
        self._exhausted = True


# --- the one decoder ---------------------------------------------------------------------------------------------
@dataclass
class _Header:
    """What the decoder at work read from the container, and the damage it skipped so far."""

    declared: float | None = None
    """The length the header declares (for the loss warning)."""
    expected: float | None = None
    """The length the file holds, when known (to preallocate the whole output)."""
    bad_packets: int = 0


_Blocks = Generator[np.ndarray | None, None, None]


class _NotForLibsndfile(Exception):
    """libsndfile does not know the format, or gave up on the file: FFmpeg decodes it."""


def _decoded_blocks(
    file: BinaryIO, ext: str, max_seconds: float | None, limits: DecodeLimits, header: _Header
) -> _Blocks:
    """16 kHz mono float32 blocks of `file` (positioned at its start), each the caller's own.

    Yields None when a decoder has opened the file and `header` passed the limits, then its blocks. When
    libsndfile gives up midway (a damaged FLAC or MP3, a piped FLAC), a second None says FFmpeg starts over
    from the file's first byte.
    """
    origin = file.tell()
    try:
        yield from _soundfile_blocks(file, max_seconds, limits, header)
        return
    except _NotForLibsndfile:
        file.seek(origin)
    yield from _ffmpeg_blocks(file, ext, max_seconds, limits, header)


def _soundfile_blocks(file: BinaryIO, max_seconds: float | None, limits: DecodeLimits, header: _Header) -> _Blocks:
    """Decode with libsndfile when it knows the format; raises `_NotForLibsndfile` to let FFmpeg try."""
    import soundfile as sf

    try:
        with sf.SoundFile(file) as sound:
            if sound.samplerate <= 0 or sound.frames <= 0:
                raise _NotForLibsndfile
            limits.check(sound.channels, sound.samplerate)
            declared = _soundfile_declared_seconds(sound)
            # What the file holds (libsndfile's clamped count) bounds the work; the header's claim only the warning.
            present = None if sound.frames >= _UNKNOWN_FRAMES else sound.frames / sound.samplerate
            _check_declared(present, max_seconds)
            header.declared, header.expected, header.bad_packets = declared, present, 0
            yield None
            resampler = MonoResampler(max_seconds)
            block = np.empty((limits.block_frames(sound.samplerate), sound.channels), dtype=np.float32)
            while True:
                read = sound.read(out=block)
                if len(read) == 0:
                    break
                yield from resampler.add(read.mean(axis=1) if sound.channels > 1 else read[:, 0], sound.samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # Unknown to libsndfile, or damaged mid-stream: FFmpeg skips bad packets and reports them.
        raise _NotForLibsndfile from exc
    yield from resampler.finish()


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


def _ffmpeg_blocks(
    file: BinaryIO, ext: str, max_seconds: float | None, limits: DecodeLimits, header: _Header
) -> _Blocks:
    import av

    try:
        with av.open(_Nameless(file), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream", param="file", code="no_audio_stream")
            stream = container.streams.audio[0]
            limits.check(stream.codec_context.channels, stream.codec_context.sample_rate or SAMPLE_RATE)
            declared = _ffmpeg_declared_seconds(container, stream)
            _check_declared(declared, max_seconds)
            header.declared, header.expected, header.bad_packets = declared, declared, 0
            yield None
            resampler = MonoResampler(max_seconds)
            # Only the sample format changes (planar float); the downmix is a plain mean, as for libsndfile.
            converter = av.AudioResampler(format="fltp")
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    header.bad_packets += 1
                    if header.bad_packets > MAX_BAD_PACKETS:
                        raise
                    continue
                for frame in frames:
                    limits.check(len(frame.layout.channels), frame.sample_rate)
                    for planar in converter.resample(frame):
                        yield from resampler.add(planar.to_ndarray().mean(axis=0, dtype=np.float32), planar.sample_rate)
    except av.error.FFmpegError as exc:
        if ext and ext not in KNOWN_AUDIO_EXTENSIONS:
            raise UnsupportedMediaType(
                f"unsupported file format '.{ext}'; send audio such as " + ", ".join(sorted(KNOWN_AUDIO_EXTENSIONS)),
                param="file",
            ) from exc
        raise AudioDecodeError(f"could not decode the audio: {exc}", param="file") from exc
    except (ValueError, IndexError, EOFError, OSError) as exc:
        raise AudioDecodeError(f"could not decode the audio: {exc}", param="file") from exc
    yield from resampler.finish()


class _Nameless:
    """A file as FFmpeg sees an upload's bytes: PyAV hands FFmpeg a file object's `name`, and FFmpeg would let its
    extension pick the demuxer (a `.txt` file is then ANSI art with no audio stream, not an unsupported format)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True


def _ffmpeg_declared_seconds(container: object, stream: object) -> float | None:
    duration, time_base = stream.duration, stream.time_base  # type: ignore[attr-defined]
    if duration is not None and duration > 0 and time_base:
        return float(duration * time_base)
    total = container.duration  # type: ignore[attr-defined]  # microseconds (AV_TIME_BASE)
    return total / 1_000_000 if total is not None and total > 0 else None


def _check_declared(declared: float | None, max_seconds: float | None) -> None:
    if declared is not None and max_seconds is not None and declared > max_seconds + DECLARED_SLACK_S:
        raise too_long(max_seconds)


def _loss_warning(samples: int, header: _Header) -> str | None:
    """The warning for `samples` decoded of a file with this header; raises when there is nothing to transcribe."""
    if samples == 0:
        raise AudioDecodeError("the file contains no audio samples", param="file", code="empty_audio")
    decoded = samples / SAMPLE_RATE
    declared = header.declared
    notes = []
    if declared is not None and declared - decoded > max(LOSS_TOLERANCE_S, LOSS_TOLERANCE_FRACTION * declared):
        notes.append(f"only {decoded:.2f} s of the {declared:.2f} s the file declares could be decoded")
    if header.bad_packets:
        notes.append(f"{header.bad_packets} damaged packet{'s' if header.bad_packets > 1 else ''} skipped")
    if notes and decoded < MIN_DECODED_SECONDS:
        raise AudioDecodeError(
            f"the file is truncated or damaged: {'; '.join(notes)}", param="file", code="invalid_audio"
        )
    return f"the audio is truncated or damaged: {'; '.join(notes)}" if notes else None


def _empty_file() -> AudioDecodeError:
    return AudioDecodeError("the uploaded file is empty", param="file", code="empty_file")


def resample(samples: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    if source_rate == target_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples, source_rate, target_rate).astype(np.float32, copy=False)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes → float32 in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0

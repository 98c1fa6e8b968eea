"""Progressive decoding (`open_audio_stream`) and cutting (`iter_pieces`): the same samples as `decode_audio`, the same
cuts as `split_at_quiet_points`, the same errors, with memory bounded by a piece, not by the file."""

from __future__ import annotations

import io
import itertools
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from asr_server.errors import AudioDecodeError, PayloadTooLarge, ServiceError, UnsupportedMediaType
from asr_server.media import SAMPLE_RATE
from asr_server.media.audio import DecodeLimits, decode_audio, open_audio_stream
from asr_server.media.pieces import AudioPiece, iter_pieces
from asr_server.media.vad import split_at_quiet_points

from hostile_media import corrupt_middle, pyav_encode, silent_soundfile, wav, wav_header_only
from support import encode, speechlike, tone

MB = 1_000_000


def _stereo(seconds: float, rate: int) -> np.ndarray:
    left = speechlike(seconds, seed=3)
    if rate != SAMPLE_RATE:
        import soxr

        left = soxr.resample(left, SAMPLE_RATE, rate).astype(np.float32)
    return np.stack([left, 0.5 * left], axis=1)


def _pyav_speech(seconds: float, rate: int, container: str, codec: str) -> bytes:
    """Speech-like stereo encoded by PyAV (AAC in MP4, Opus in WebM: formats libsndfile does not read)."""
    import av

    audio = _stereo(seconds, rate)
    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout="stereo")
        size = stream.codec_context.frame_size or 1024
        sample_format = stream.codec_context.format.name
        dtype, scale = {"s16": (np.int16, 32767), "flt": (np.float32, 1)}[sample_format.rstrip("p")]
        for start in range(0, len(audio), size):
            chunk = (audio[start : start + size] * scale).astype(dtype)
            # planar: one row per channel; packed: the channels interleaved in one row
            chunk = np.ascontiguousarray(chunk.T if sample_format.endswith("p") else chunk.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(chunk, format=sample_format, layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return out.getvalue()


FORMATS: dict[str, Callable[[], tuple[bytes, str]]] = {
    "wav 16 kHz mono": lambda: (encode(speechlike(5.0, seed=1), SAMPLE_RATE, "WAV", "PCM_16"), "a.wav"),
    "flac 48 kHz stereo": lambda: (encode(_stereo(5.0, 48_000), 48_000, "FLAC", "PCM_24"), "a.flac"),
    "ogg vorbis 44.1 kHz": lambda: (encode(_stereo(5.0, 44_100), 44_100, "OGG", "VORBIS"), "a.ogg"),
    "mp3 44.1 kHz": lambda: (encode(_stereo(5.0, 44_100), 44_100, "MP3", "MPEG_LAYER_III"), "a.mp3"),
    "aac in m4a 22.05 kHz": lambda: (_pyav_speech(5.0, 22_050, "mp4", "aac"), "a.m4a"),
    "opus in webm 48 kHz": lambda: (_pyav_speech(5.0, 48_000, "webm", "libopus"), "a.webm"),
}


def _source(kind: str, data: bytes, filename: str, tmp_path: Path) -> tuple[object, str | None]:
    if kind == "bytes":
        return data, filename
    path = tmp_path / filename
    path.write_bytes(data)
    if kind == "path":
        return path, None  # the extension comes from the path
    handle = path.open("rb")
    handle.seek(7)  # read from the first byte whatever the position
    return handle, filename


def _stream_all(source: object, filename: str | None, **kwargs: object) -> tuple[np.ndarray, object]:
    with open_audio_stream(source, filename, **kwargs) as stream:  # type: ignore[arg-type]
        declared = stream.declared_duration
        blocks = list(stream)
        assert stream.declared_duration == declared
        assert stream.decoded_seconds == pytest.approx(sum(len(b) for b in blocks) / SAMPLE_RATE)
        return np.concatenate(blocks), stream


@pytest.mark.parametrize("kind", ["bytes", "file", "path"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_streamed_blocks_are_decode_audios_samples(fmt: str, kind: str, tmp_path: Path) -> None:
    data, filename = FORMATS[fmt]()
    whole = decode_audio(data, filename, max_seconds=60)
    source, name = _source(kind, data, filename, tmp_path)
    blocks: list[np.ndarray] = []
    try:
        with open_audio_stream(source, name, max_seconds=60) as stream:  # type: ignore[arg-type]
            assert stream.declared_duration == whole.declared_duration  # known before a block is read
            for block in stream:
                assert block.dtype == np.float32 and block.ndim == 1 and block.base is None
                assert len(block) <= 2 * SAMPLE_RATE  # a second of source at most, resampled
                blocks.append(block)
            assert stream.warning is whole.warning is None
            assert stream.decoded_seconds == whole.duration
    finally:
        if kind == "file":
            source.close()  # type: ignore[attr-defined]
    assert len(blocks) >= 2
    np.testing.assert_array_equal(np.concatenate(blocks), whole.samples)  # bit for bit


def test_truncated_and_damaged_files_give_the_same_samples_and_warning() -> None:
    # libsndfile gives up midway through a FLAC piped without a length and a damaged FLAC: FFmpeg decodes on from
    # where the stream was, and for a lossless format that is the same audio decode_audio decodes again whole.
    flac = encode(speechlike(20.0, seed=2), SAMPLE_RATE, "FLAC")
    webm = pyav_encode(4.0, 48_000, container="webm", codec="libopus")
    cases = {
        "wav cut in half": (wav(2.0)[: len(wav(2.0)) // 2], "half.wav"),
        "webm cut in half": (webm[: len(webm) // 2], "half.webm"),
        "flac piped": (pyav_encode(3.0, 16_000, container="flac", codec="flac", seekable=False), "live.flac"),
        "flac cut in half": (flac[: len(flac) // 2], "half.flac"),
        "flac damaged": (corrupt_middle(flac, len(flac) // 2, 2000), "damaged.flac"),
    }
    for name, (data, filename) in cases.items():
        whole = decode_audio(data, filename)
        samples, stream = _stream_all(data, filename)
        np.testing.assert_array_equal(samples, whole.samples, err_msg=name)
        assert stream.warning == whole.warning, name  # type: ignore[attr-defined]
        assert stream.declared_duration == whole.declared_duration, name  # type: ignore[attr-defined]
        again = stream.to_decoded(samples)  # type: ignore[attr-defined]
        assert (again.warning, again.declared_duration, again.duration) == (
            whole.warning,
            whole.declared_duration,
            whole.duration,
        )
    assert decode_audio(*cases["wav cut in half"]).warning is not None


def test_a_damaged_mp3_streams_what_decode_audio_decodes_within_decoder_precision() -> None:
    # libsndfile (mpg123) gives up at the damage after handing out blocks; FFmpeg decodes on. decode_audio decodes
    # the whole file with FFmpeg instead, so the head differs by the two MP3 decoders' rounding, and only that.
    rng = np.random.default_rng(0)
    mp3 = encode((0.05 * rng.standard_normal(20 * 44_100)).astype(np.float32), 44_100, "MP3", "MPEG_LAYER_III")
    data = corrupt_middle(mp3, len(mp3) // 2, 3000)
    whole = decode_audio(data, "damaged.mp3")
    assert whole.warning is not None and "damaged packet skipped" in whole.warning  # FFmpeg decoded it
    samples, stream = _stream_all(data, "damaged.mp3")
    assert len(samples) == len(whole.samples)
    np.testing.assert_allclose(samples, whole.samples, atol=1e-5)
    assert stream.warning == whole.warning is not None  # type: ignore[attr-defined]


def _error(call: Callable[[], object]) -> tuple[type, str, int]:
    with pytest.raises(ServiceError) as caught:
        call()
    return type(caught.value), caught.value.code, caught.value.status_code


def _stream_error(source: object, filename: str | None, *, on_open: bool, **kwargs: object) -> tuple[type, str, int]:
    opened: list[bool] = []

    def run() -> None:
        with open_audio_stream(source, filename, **kwargs) as stream:  # type: ignore[arg-type]
            opened.append(True)
            for _ in stream:
                pass

    outcome = _error(run)
    assert bool(opened) is not on_open, f"raised {'after' if opened else 'on'} opening"
    return outcome


ERRORS = {
    # name: (bytes, filename, kwargs, raised on opening)
    "empty": (b"", "a.wav", {}, True),
    "random bytes": (corrupt_middle(b"\0" * 4096, 0, 4096), "noise.wav", {}, True),
    "text with an unknown extension": (b"hello world " * 100, "a.txt", {}, True),
    "a header and nothing else": (silent_soundfile(1, 16_000, 1)[:42], "h.flac", {}, False),
    "wav cut to 200 bytes": (wav(2.0)[:200], "cut.wav", {}, False),
    "1024 channels": (wav_header_only(1024, 16_000), "wide.wav", {}, True),
    "too many channels for the limits": (
        pyav_encode(1.0, 48_000, container="matroska", codec="flac", channels=2),
        "x.mkv",
        {"limits": DecodeLimits(max_channels=1)},
        True,
    ),
    "too long by the header": (silent_soundfile(600, 16_000, 1), "long.flac", {"max_seconds": 60}, True),
    "too long while decoding": (
        pyav_encode(20.0, 16_000, container="flac", codec="flac", silent=True, seekable=False),
        "live.flac",
        {"max_seconds": 5},
        False,
    ),
    "too long while decoding in matroska": (
        pyav_encode(20.0, 48_000, container="matroska", codec="flac", silent=True, seekable=False),
        "live.mkv",
        {"max_seconds": 5},
        False,
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_are_decode_audios(name: str, tmp_path: Path) -> None:
    data, filename, kwargs, on_open = ERRORS[name]
    expected = _error(lambda: decode_audio(data, filename, **kwargs))  # type: ignore[arg-type]
    assert _stream_error(data, filename, on_open=on_open, **kwargs) == expected
    path = tmp_path / filename
    path.write_bytes(data)
    assert _stream_error(path, None, on_open=on_open, **kwargs) == expected
    with path.open("rb") as handle:
        assert _stream_error(handle, filename, on_open=on_open, **kwargs) == expected
    assert expected[0] in (AudioDecodeError, PayloadTooLarge, UnsupportedMediaType)


def test_the_header_is_checked_before_any_block_and_the_length_while_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        open_audio_stream(silent_soundfile(600, 16_000, 1), "long.flac", max_seconds=60)
    piped = pyav_encode(20.0, 16_000, container="flac", codec="flac", silent=True, seekable=False)
    with open_audio_stream(piped, "live.flac", max_seconds=5) as stream:
        assert stream.declared_duration is None
        with pytest.raises(PayloadTooLarge):
            for _ in stream:
                assert stream.decoded_seconds <= 5
        assert stream.decoded_seconds <= 5


class _CountingReader(io.RawIOBase):
    """A seekable file that records how much was read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.read_bytes = 0
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = self._data.readinto(buffer)
        self.read_bytes += n
        self.largest_read = max(self.largest_read, n)
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        return self._data.tell()


@pytest.mark.parametrize(
    ("filename", "build"),
    [
        ("long.wav", lambda: encode(tone(60.0), SAMPLE_RATE, "WAV")),
        ("long.webm", lambda: pyav_encode(60.0, 48_000, container="webm", codec="libopus")),
    ],
)
def test_a_file_object_is_read_as_the_blocks_are_needed(filename: str, build: Callable[[], bytes]) -> None:
    data = build()
    reader = _CountingReader(data)
    with open_audio_stream(reader, filename) as stream:  # type: ignore[arg-type]
        next(stream)
        assert reader.read_bytes < len(data) / 4, f"{reader.read_bytes} of {len(data)} bytes read for one block"
        total = sum(len(block) for block in stream)
    assert total > 50 * SAMPLE_RATE
    assert reader.largest_read < len(data) / 4


def test_closing_early_releases_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    path.write_bytes(encode(speechlike(30.0, seed=4), SAMPLE_RATE, "FLAC"))
    fds = len(os.listdir("/proc/self/fd"))
    with open_audio_stream(path) as stream:
        next(stream)
        assert stream.warning is None and not stream.exhausted
    assert len(os.listdir("/proc/self/fd")) == fds
    assert list(stream) == []  # a closed stream has nothing more


# --- iter_pieces ------------------------------------------------------------------------------------------------
def _audio_with_pauses(seconds: float, rate: int, seed: int, pauses: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    for _ in range(pauses):
        start = int(rng.integers(0, max(1, len(audio))))
        audio[start : start + int(rng.uniform(0.02, 0.6) * rate)] *= rng.choice([0.0, 0.001, 0.02])
    return audio


def _blocks(audio: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    blocks, start, k = [], 0, 0
    while start < len(audio):
        size = sizes[k % len(sizes)]
        blocks.append(audio[start : start + size])
        start, k = start + size, k + 1
    return blocks


def _check_pieces(pieces: list[AudioPiece], audio: np.ndarray, window: int) -> None:
    assert [p.index for p in pieces] == list(range(len(pieces)))
    if len(audio) == 0:
        assert pieces == []
    else:
        assert pieces[0].start_sample == 0
    for before, after in itertools.pairwise(pieces):
        assert before.end_sample == after.start_sample
    for piece in pieces:
        assert 0 < len(piece.samples) <= window
        assert piece.samples.dtype == np.float32 and piece.samples.base is None  # its own array
        np.testing.assert_array_equal(piece.samples, audio[piece.start_sample : piece.end_sample])
    assert sum(len(p.samples) for p in pieces) == len(audio)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.sampled_from([16_000, 16_000, 8_000, 1_000, 50]),
    seconds=st.floats(0.0, 12.0),
    max_seconds=st.floats(0.01, 4.0),
    sizes=st.lists(st.integers(1, 40_000) | st.integers(1, 200), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
    pauses=st.integers(0, 15),
    silent=st.booleans(),
)
def test_iter_pieces_cuts_where_split_at_quiet_points_cuts(
    rate: int, seconds: float, max_seconds: float, sizes: list[int], seed: int, pauses: int, silent: bool
) -> None:
    audio = _audio_with_pauses(seconds, rate, seed, pauses)
    if silent:
        audio[len(audio) // 3 :] = 0.0  # long stretches of equal energy: ties resolved the same way
    assume(int(max_seconds * rate) >= 1)
    pieces = list(iter_pieces(_blocks(audio, sizes), max_seconds, rate))
    expected = split_at_quiet_points(audio, rate, max_seconds)
    assert [(p.start_sample, p.end_sample) for p in pieces] == expected
    _check_pieces(pieces, audio, int(max_seconds * rate))


@pytest.mark.parametrize("max_seconds", [0.3, 2.5, 10.0, 30.0])
def test_decoded_speech_is_cut_as_the_synchronous_path_cuts_it(max_seconds: float) -> None:
    data = encode(speechlike(75.0, seed=5))
    whole = decode_audio(data, "a.wav")
    with open_audio_stream(data, "a.wav") as stream:
        pieces = list(iter_pieces(stream, max_seconds))
    assert [(p.start_sample, p.end_sample) for p in pieces] == split_at_quiet_points(
        whole.samples, SAMPLE_RATE, max_seconds
    )
    _check_pieces(pieces, whole.samples, int(max_seconds * SAMPLE_RATE))
    assert pieces[-1].end == pytest.approx(75.0) and pieces[0].start == 0.0


def test_iter_pieces_edges() -> None:
    assert list(iter_pieces([], 1.0)) == []
    assert list(iter_pieces([np.zeros(0, np.float32)] * 3, 1.0)) == []
    (one,) = iter_pieces([np.ones(100, np.float32)], 1.0)
    assert (one.start_sample, one.end_sample, one.start, one.end) == (0, 100, 0.0, 100 / SAMPLE_RATE)
    # Shorter than one 10 ms frame yet longer than max_seconds: plain cuts of max_seconds.
    tiny = list(iter_pieces([np.ones(100, np.float32)], 0.001))
    assert [len(p.samples) for p in tiny] == [16] * 6 + [4]
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError):
            iter_pieces([], bad)
    with pytest.raises(ValueError):
        iter_pieces([], 1.0, sample_rate=0)
    with pytest.raises(ValueError):
        iter_pieces([], 1e-9)
    with pytest.raises(ValueError):
        list(iter_pieces([np.zeros((10, 2), np.float32)], 1.0))


def test_two_hours_stream_through_pieces_in_bounded_memory(tmp_path: Path) -> None:
    rate, hours, block_s = 8_000, 2, 60
    path = tmp_path / "lecture.flac"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(hours * 3600 // block_s):  # quiet noise with pauses, written a minute at a time
            minute = rng.integers(-40, 41, block_s * rate, dtype=np.int16)
            for at in rng.uniform(0, block_s - 2, 3):
                minute[int(at * rate) : int((at + rng.uniform(0.5, 1.5)) * rate)] = 0
            out.write(minute)
    max_seconds = 60.0
    window_bytes = int(max_seconds * SAMPLE_RATE) * 4  # 3.8 MB
    whole_bytes = hours * 3600 * SAMPLE_RATE * 4  # 460 MB decoded whole
    spans: list[tuple[int, int]] = []
    tracemalloc.start()
    try:
        with open_audio_stream(path, max_seconds=3 * 3600) as stream:
            assert stream.declared_duration == hours * 3600
            for piece in iter_pieces(stream, max_seconds):
                spans.append((piece.start_sample, piece.end_sample))
            warning = stream.warning
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert warning is None
    assert spans[0][0] == 0 and spans[-1][1] == hours * 3600 * SAMPLE_RATE
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(0 < end - start <= max_seconds * SAMPLE_RATE for start, end in spans)
    assert len(spans) >= hours * 60
    # The window being filled, the piece handed out and the one the caller still holds, plus a block.
    assert peak < 6 * window_bytes, f"peak {peak / MB:.1f} MB (the whole decode would be {whole_bytes / MB:.0f} MB)"

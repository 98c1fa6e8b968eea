"""`decode_audio` on bombs, unknown lengths and broken files: limits before and while decoding, loss reported."""

from __future__ import annotations

import tracemalloc

import httpx
import numpy as np
import pytest

from asr_server.config import Settings
from asr_server.errors import AudioDecodeError, PayloadTooLarge
from asr_server.media.audio import DecodeLimits, decode_audio
from asr_server.server import create_app

from hostile_media import corrupt_middle, pyav_encode, silent_soundfile, wav, wav_header_only
from support import running_server

MIB = 1024 * 1024


def _peak_numpy_bytes(data: bytes, filename: str, **kwargs: object) -> tuple[int, object]:
    """Peak bytes Python and numpy allocate while decoding (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        try:
            outcome: object = decode_audio(data, filename, **kwargs)  # type: ignore[arg-type]
        except (AudioDecodeError, PayloadTooLarge) as exc:
            outcome = exc
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


def test_piped_flac_without_a_length_is_measured_not_refused() -> None:
    data = pyav_encode(2.0, 16_000, container="flac", codec="flac", seekable=False)
    audio = decode_audio(data, "live.flac", max_seconds=1200)
    assert audio.duration == pytest.approx(2.0, abs=0.01)
    assert audio.declared_duration is None and audio.warning is None
    assert float(np.abs(audio.samples).max()) > 0.2  # the sine, not silence


def test_piped_flac_longer_than_the_limit_is_cut_off_while_decoding() -> None:
    data = pyav_encode(20.0, 16_000, container="flac", codec="flac", silent=True, seekable=False)
    with pytest.raises(PayloadTooLarge) as caught:
        decode_audio(data, "live.flac", max_seconds=5)
    assert caught.value.code == "audio_too_long" and caught.value.status_code == 413


def test_a_declared_bomb_is_refused_from_the_header_before_decoding() -> None:
    bomb = silent_soundfile(600, 192_000, 2)  # ~450 KB declaring 10 minutes of 192 kHz stereo
    peak, outcome = _peak_numpy_bytes(bomb, "bomb.flac", max_seconds=60)
    assert isinstance(outcome, PayloadTooLarge) and outcome.code == "audio_too_long"
    assert peak < 4 * MIB, f"refusing from the header allocated {peak / MIB:.1f} MiB"


def test_accepted_high_rate_stereo_costs_the_16k_mono_output_not_the_source() -> None:
    seconds = 60.0
    data = silent_soundfile(seconds, 192_000, 2)
    peak, outcome = _peak_numpy_bytes(data, "hi-res.flac", max_seconds=120)
    assert not isinstance(outcome, Exception), outcome
    assert outcome.duration == pytest.approx(seconds, abs=0.01)  # type: ignore[attr-defined]
    output = int(seconds * 16_000 * 4)  # 3.7 MiB; the source decoded whole is 88 MiB
    assert peak < 2 * output + 10 * MIB, f"decoding allocated {peak / MIB:.1f} MiB for a {output / MIB:.1f} MiB output"


def test_unknown_length_matroska_at_384_khz_is_cut_off_with_bounded_memory() -> None:
    data = pyav_encode(40.0, 384_000, container="matroska", codec="flac", channels=2, silent=True, seekable=False)
    peak, outcome = _peak_numpy_bytes(data, "bomb.mkv", max_seconds=20)
    assert isinstance(outcome, PayloadTooLarge) and outcome.code == "audio_too_long"
    limit_output = 20 * 16_000 * 4  # 1.2 MiB; 20 s of the 384 kHz source is 29 MiB
    assert peak < 2 * limit_output + 10 * MIB, f"decoding allocated {peak / MIB:.1f} MiB"


@pytest.mark.parametrize(
    ("channels", "rate", "code"),
    [
        (1024, 16_000, "unsupported_channels"),
        (33, 48_000, "unsupported_channels"),
        (2, 768_000, "unsupported_sample_rate"),
        (1, 400, "unsupported_sample_rate"),
    ],
)
def test_absurd_channel_counts_and_rates_are_refused_with_a_code(channels: int, rate: int, code: str) -> None:
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(wav_header_only(channels, rate), "odd.wav")
    assert caught.value.status_code == 400 and caught.value.code == code and caught.value.param == "file"


def test_limits_apply_on_the_ffmpeg_path_too() -> None:
    data = pyav_encode(1.0, 48_000, container="matroska", codec="flac", channels=2)
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(data, "x.mkv", limits=DecodeLimits(max_channels=1))
    assert caught.value.code == "unsupported_channels"


def test_eight_channel_192_khz_flac_decodes_to_mono() -> None:
    audio = decode_audio(silent_soundfile(5, 192_000, 8), "surround.flac", max_seconds=1200)
    assert audio.duration == pytest.approx(5.0, abs=0.01) and audio.warning is None


def test_a_whole_file_has_no_warning_and_its_declared_length() -> None:
    audio = decode_audio(wav(2.0), "a.wav")
    assert audio.warning is None and audio.declared_duration == pytest.approx(2.0)


def test_wav_cut_to_200_bytes_is_refused_as_invalid_audio() -> None:
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(wav(2.0)[:200], "cut.wav")
    assert caught.value.code == "invalid_audio" and caught.value.param == "file"
    assert "declares" in caught.value.message


def test_wav_cut_in_half_decodes_with_a_warning() -> None:
    data = wav(2.0)
    audio = decode_audio(data[: len(data) // 2], "half.wav")
    assert audio.duration == pytest.approx(1.0, abs=0.01)
    assert audio.declared_duration == pytest.approx(2.0, abs=0.01)
    assert audio.warning is not None and "2.00 s" in audio.warning


def test_webm_cut_in_half_decodes_with_a_warning() -> None:
    data = pyav_encode(4.0, 48_000, container="webm", codec="libopus")
    audio = decode_audio(data[: len(data) // 2], "half.webm")
    assert 1.0 < audio.duration < 3.0
    assert audio.declared_duration == pytest.approx(4.0, abs=0.05)
    assert audio.warning is not None and "declares" in audio.warning


def test_mp3_with_damaged_frames_reports_them() -> None:
    data = pyav_encode(4.0, 44_100, container="mp3", codec="libmp3lame")
    audio = decode_audio(corrupt_middle(data, 10_000, 8_000), "damaged.mp3")
    assert audio.duration < 3.8
    assert audio.warning is not None


def test_mp3_cut_in_half_reports_the_loss() -> None:
    data = pyav_encode(4.0, 44_100, container="mp3", codec="libmp3lame")
    audio = decode_audio(data[: len(data) // 2], "half.mp3")
    assert audio.warning is not None and audio.declared_duration == pytest.approx(4.0, abs=0.05)


def test_a_truncated_upload_is_transcribed_with_an_audio_warning_header() -> None:
    data = wav(2.0)
    settings = Settings(asr_engine="fake", log_level="WARNING")
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        whole, cut, broken = (
            http.post("/v1/audio/transcriptions", files={"file": ("a.wav", upload)})
            for upload in (data, data[: len(data) // 2], data[:200])
        )
    assert whole.status_code == 200 and "x-audio-warning" not in whole.headers
    assert cut.status_code == 200, cut.text
    assert "1.00 s of the 2.00 s" in cut.headers["x-audio-warning"]
    assert cut.json()["duration"] == pytest.approx(1.0, abs=0.01)
    assert cut.json()["warnings"] == [cut.headers["x-audio-warning"]] and "warnings" not in whole.json()
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_audio" and broken.json()["error"]["param"] == "file"


def test_a_header_that_overstates_the_length_is_judged_by_what_the_file_holds() -> None:
    data = bytearray(wav(2.0))
    assert data[36:40] == b"data"
    data[40:44] = (3000 * 16_000 * 2).to_bytes(4, "little")  # the header now claims 3,000 s
    audio = decode_audio(bytes(data), "claims.wav", max_seconds=1200)
    assert audio.duration == pytest.approx(2.0, abs=0.01)
    assert audio.declared_duration == pytest.approx(3000, rel=0.01)
    assert audio.warning is not None and "3000.00 s" in audio.warning

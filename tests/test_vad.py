"""Speech detection and quiet-point splitting (asr_server.media.vad)."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_server.media import vad as vad_module
from asr_server.media.vad import (
    FRAME_SAMPLES,
    EnergyVAD,
    SileroVAD,
    frame_probabilities,
    load_vad,
    silero_model_path,
    speech_regions,
    split_at_quiet_points,
)

SR = 16000
needs_silero = pytest.mark.skipif(silero_model_path() is None, reason="silero-vad model not installed")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def voiced(seconds: float, f0: float = 130.0, seed: int = 0) -> np.ndarray:
    """Speech-like sound: a harmonic-rich glottal tone with vibrato and syllable-rate amplitude."""
    t = np.arange(int(seconds * SR)) / SR
    pitch = f0 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    tone = sum(np.sin(k * phase) / k for k in range(1, 15))
    envelope = (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t - np.pi / 2)) ** 2
    noise = np.random.default_rng(seed).normal(0, 0.002, t.size)
    return (0.3 * tone * envelope + noise).astype(np.float32)


def silence(seconds: float, level: float = 0.0005, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, level, int(seconds * SR)).astype(np.float32)


def _overlap(region: tuple[float, float], start: float, end: float) -> float:
    return max(0.0, min(region[1], end) - max(region[0], start))


@needs_silero
def test_silero_loads_without_torch() -> None:
    code = (
        "import sys, numpy as np; from asr_server.media.vad import SileroVAD; v = SileroVAD();"
        "v.process_frame(np.zeros(512, np.float32)); assert 'silero_vad' not in sys.modules;"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_silero
def test_silero_streaming_matches_silero_sequence_model() -> None:
    """Our per-frame state/context handling gives silero's own batched model's probabilities."""
    import onnxruntime

    sequence_model = silero_model_path().with_name("silero_vad_16k_sequence.onnx")
    if not sequence_model.is_file():
        pytest.skip("silero sequence model not shipped")
    audio = np.concatenate([silence(0.5), voiced(1.5), silence(0.7), voiced(1.0, f0=180)])
    ours = frame_probabilities(audio, SileroVAD())
    count = ours.size
    frames = np.zeros((count, FRAME_SAMPLES), np.float32)
    frames.reshape(-1)[: audio.size] = audio
    context = np.zeros((count, 64), np.float32)
    context[1:] = frames[:-1, -64:]
    session = onnxruntime.InferenceSession(str(sequence_model), providers=["CPUExecutionProvider"])
    zeros = np.zeros((1, 1, 128), np.float32)
    reference = session.run(["speech_probs"], {"input": np.hstack([context, frames]), "h": zeros, "c": zeros})[0]
    np.testing.assert_allclose(ours, reference.reshape(-1), atol=1e-5)


@needs_silero
def test_silero_stream_state_and_reset() -> None:
    detector = SileroVAD()
    clip = voiced(1.0)
    frames = [clip[i : i + FRAME_SAMPLES] for i in range(0, clip.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    first = [detector.process_frame(f) for f in frames]
    detector.reset()
    again = [detector.process_frame(f) for f in frames]
    assert first == again
    assert max(first) > 0.5
    detector.reset()
    assert detector.process_frame(np.zeros(FRAME_SAMPLES, np.float32)) < 0.2
    assert 0.0 <= detector.process_frame(clip[:100]) <= 1.0  # a short last frame is zero-padded
    with pytest.raises(ValueError):
        detector.process_frame(np.zeros(1024, np.float32))


@needs_silero
def test_separate_instances_in_threads_agree() -> None:
    clip = voiced(0.64)
    frames = clip[: 20 * FRAME_SAMPLES].reshape(20, FRAME_SAMPLES)
    results: dict[int, list[float]] = {}

    def run(n: int) -> None:
        detector = SileroVAD()
        results[n] = [detector.process_frame(f) for f in frames]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == results[1] == results[2]


def test_energy_regions_of_synthetic_speech() -> None:
    audio = np.concatenate([silence(1.0), voiced(2.0), silence(1.5), voiced(1.5, f0=200, seed=3), silence(1.0)])
    regions = speech_regions(audio, SR, vad=EnergyVAD())
    assert len(regions) == 2
    assert _overlap(regions[0], 1.0, 3.0) > 1.7 and _overlap(regions[1], 4.5, 6.0) > 1.2
    assert regions[0][1] < 4.5 and regions[1][0] > 3.0  # the pause is found
    assert all(0.0 <= a < b <= audio.size / SR for a, b in regions)


@needs_silero
def test_silero_regions_stay_on_synthetic_voicing() -> None:
    # Silero is trained to reject tones, so it may miss part of a synthetic vowel; it must never
    # report speech in the silences around it.
    audio = np.concatenate([silence(1.0), voiced(2.0), silence(1.5), voiced(1.5, f0=200, seed=3), silence(1.0)])
    regions = speech_regions(audio, SR, pad_s=0.0)
    assert regions
    for region in regions:
        inside = _overlap(region, 1.0, 3.0) + _overlap(region, 4.5, 6.0)
        assert inside >= 0.9 * (region[1] - region[0])


@pytest.mark.parametrize("kind", ["silero", "energy"])
def test_no_regions_in_silence_or_low_noise(kind: str) -> None:
    detector = load_vad(kind)
    assert speech_regions(np.zeros(3 * SR, np.float32), vad=detector) == []
    assert speech_regions(silence(3.0, level=0.002), vad=detector) == []
    assert speech_regions(np.zeros(0, np.float32), vad=detector) == []


def test_other_sample_rates_and_stereo() -> None:
    import soxr

    audio = np.concatenate([silence(1.0), voiced(2.0), silence(1.0)])
    base = speech_regions(audio, SR, vad=EnergyVAD())
    for rate in (8000, 44100):
        resampled = soxr.resample(audio, SR, rate).astype(np.float32)
        regions = speech_regions(resampled, rate, vad=EnergyVAD())
        assert len(regions) == len(base) == 1
        assert abs(regions[0][0] - base[0][0]) < 0.1 and abs(regions[0][1] - base[0][1]) < 0.1
    stereo = np.stack([audio, audio], axis=1)
    assert speech_regions(stereo, SR, vad=EnergyVAD()) == base


def test_load_vad_falls_back_to_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(load_vad("energy"), EnergyVAD)
    monkeypatch.setattr(vad_module, "silero_model_path", lambda: None)
    assert isinstance(load_vad(), EnergyVAD)
    with pytest.raises(ValueError):
        load_vad("webrtc")
    with pytest.raises(ValueError):
        speech_regions(voiced(1.0), threshold=1.5)


def test_energy_vad_stream() -> None:
    detector = EnergyVAD()
    quiet = [detector.process_frame(silence(0.032, seed=s)) for s in range(30)]
    loud = [detector.process_frame(voiced(0.032 * 8)[i * 512 : (i + 1) * 512]) for i in range(8)]
    assert max(quiet) < 0.1 and max(loud) > 0.9
    detector.reset()
    assert detector.process_frame(np.zeros(512, np.float32)) < 0.5


def _espeak(voice: str, text: str, path: Path) -> np.ndarray:
    command = ["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text]
    if subprocess.run(command, capture_output=True).returncode != 0:
        pytest.skip(f"espeak-ng has no voice {voice!r}")
    with wave.open(str(path)) as handle:
        rate = handle.getframerate()
        samples = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16)
    import soxr

    return soxr.resample(samples.astype(np.float32) / 32768, rate, SR).astype(np.float32)


@needs_espeak
@needs_silero
@pytest.mark.parametrize(
    ("voice", "first_text", "second_text"),
    [
        ("en", "The weather is lovely today, so we are going for a walk.", "Afterwards we will have dinner together."),
        ("cmn", "今天天气很好，我们一起去公园散步吧。", "然后我们去吃饭。"),
    ],
)
def test_silero_finds_real_speech_and_the_pause(tmp_path: Path, voice: str, first_text: str, second_text: str) -> None:
    first = _espeak(voice, first_text, tmp_path / "a.wav")
    second = _espeak(voice, second_text, tmp_path / "b.wav")
    audio = np.concatenate([silence(1.0), first, silence(1.2), second, silence(1.0)])
    first_span = (1.0, 1.0 + first.size / SR)
    second_span = (first_span[1] + 1.2, first_span[1] + 1.2 + second.size / SR)
    regions = speech_regions(audio, SR)
    assert regions and all(a < b <= c for (a, b), (c, _) in itertools.pairwise(regions))
    speech = sum(b - a for a, b in regions)
    found = sum(_overlap(r, *first_span) + _overlap(r, *second_span) for r in regions)
    # espeak's files end in some silence of their own, so "found" is measured against the regions.
    assert found / speech > 0.9
    assert speech > 0.6 * (first.size + second.size) / SR
    # The 1.2 s pause between the sentences is found: no region covers its middle.
    middle = first_span[1] + 0.6
    assert not any(a < middle < b for a, b in regions)
    assert any(_overlap(r, *first_span) > 0 for r in regions) and any(_overlap(r, *second_span) > 0 for r in regions)
    assert regions[0][0] > 0.7 and regions[-1][1] < audio.size / SR - 0.7


def test_split_at_quiet_points_cuts_in_the_pause() -> None:
    audio = np.concatenate([voiced(8.5), silence(0.4, level=0.0001), voiced(3.0)])
    ranges = split_at_quiet_points(audio, SR, max_seconds=10.0)
    assert ranges[0][0] == 0 and ranges[-1][1] == audio.size
    cut = ranges[0][1] / SR
    assert 8.5 <= cut <= 8.9
    assert split_at_quiet_points(audio[:100], SR, 10.0) == [(0, 100)]
    assert split_at_quiet_points(np.zeros(0, np.float32), SR, 10.0) == []
    with pytest.raises(ValueError):
        split_at_quiet_points(audio, SR, 0.0)


@settings(max_examples=60, deadline=None)
@given(
    seconds=st.floats(0.01, 400.0, allow_subnormal=False),
    max_seconds=st.sampled_from([0.5, 3.0, 30.0, 180.0]),
    seed=st.integers(0, 10),
)
def test_split_properties(seconds: float, max_seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(seconds * 1000)  # 1 kHz keeps the arrays small; the logic is rate-independent
    audio = (rng.normal(0, 0.1, size) * (rng.random(size) > 0.3)).astype(np.float32)
    ranges = split_at_quiet_points(audio, 1000, max_seconds)
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(0 < end - start <= int(max_seconds * 1000) for start, end in ranges)
    if len(ranges) > 1:
        assert all(end - start >= 0.8 * max_seconds * 1000 - 10 for start, end in ranges[:-1])

"""Voice activity detection: silero-vad through onnxruntime, with an energy detector as fallback.

The silero model file is read from the installed `silero-vad` package's data directory without
importing `silero_vad` (its `__init__` imports torch, which this server never loads).
"""

from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asr_server.media import SAMPLE_RATE

FRAME_SAMPLES = 512  # silero's window at 16 kHz (32 ms)
_CONTEXT_SAMPLES = 64  # silero prepends the previous frame's last 64 samples to each window
_STATE_SHAPE = (2, 1, 128)
_MIN_SPEECH_S = 0.25  # shorter blips are dropped, as silero's get_speech_timestamps does


class VAD(Protocol):
    """A streaming detector fed 512-sample frames of 16 kHz float32 mono audio."""

    def process_frame(self, frame_512: np.ndarray) -> float:
        """Speech probability of this frame, given the frames before it."""
        ...

    def reset(self) -> None:
        """Forget the stream so far (start of a new stream)."""
        ...


def silero_model_path() -> Path | None:
    """The installed silero-vad ONNX model, or None when silero-vad is not installed."""
    spec = importlib.util.find_spec("silero_vad")  # a top-level find_spec imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    return None


def _as_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame, dtype=np.float32).reshape(-1)
    if frame.size > FRAME_SAMPLES:
        raise ValueError(f"a frame holds {FRAME_SAMPLES} samples at 16 kHz, got {frame.size}")
    if frame.size < FRAME_SAMPLES:  # the stream's last, short frame
        frame = np.pad(frame, (0, FRAME_SAMPLES - frame.size))
    return frame


class SileroVAD:
    """Silero VAD v5/v6 on onnxruntime (CPU, one thread), as silero's own OnnxWrapper runs it.

    The ONNX session is created on first use under a lock, so an instance may be built cheaply and
    handed to a worker thread. The recurrent state belongs to one audio stream: use one instance per
    stream; `process_frame` is serialised by a lock so concurrent calls cannot corrupt the state, but
    interleaving two streams on one instance would mix them up.
    """

    def __init__(self, model_path: str | Path | None = None) -> None:
        path = Path(model_path) if model_path is not None else silero_model_path()
        if path is None or not path.is_file():
            raise FileNotFoundError("silero-vad ONNX model not found (is silero-vad installed?)")
        self.model_path = path
        self._session: Any = None  # onnxruntime.InferenceSession, created on first use
        self._lock = threading.Lock()
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def _get_session(self) -> Any:
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            # The model is tiny: more threads only add scheduling overhead per 32 ms frame.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self._session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        return self._session

    def reset(self) -> None:
        """Zero the recurrent state and the 64-sample context."""
        with self._lock:
            self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
            self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)

    def process_frame(self, frame_512: np.ndarray) -> float:
        """Speech probability (0..1) of the next 512 samples of the stream."""
        frame = _as_frame(frame_512)
        with self._lock:
            session = self._get_session()
            window = np.concatenate((self._context, frame))[np.newaxis, :]
            out, state = session.run(None, {"input": window, "state": self._state, "sr": self._sr})
            self._state = state
            self._context = window[0, -_CONTEXT_SAMPLES:].copy()
        return float(out[0, 0])


class EnergyVAD:
    """Frame-energy detector: a stand-in when onnxruntime or the silero model is missing.

    It tracks the noise floor (falls at once, rises slowly) and maps the frame level above it to a
    pseudo-probability. Loud non-speech counts as speech: it is a fallback, not a classifier.
    """

    def __init__(self, margin_db: float = 12.0, min_level_db: float = -50.0) -> None:
        self.margin_db = margin_db
        self.min_level_db = min_level_db
        self.reset()

    def reset(self) -> None:
        """Forget the noise floor."""
        self._floor_db = -70.0

    def process_frame(self, frame_512: np.ndarray) -> float:
        """Pseudo speech probability (0..1) of the next 512 samples."""
        frame = _as_frame(frame_512)
        level = 10.0 * math.log10(float(np.mean(frame.astype(np.float64) ** 2)) + 1e-12)
        # Follow quiet frames down immediately, loud ones up only slowly (~3 dB per second).
        self._floor_db = level if level < self._floor_db else self._floor_db + 0.1
        threshold = max(self._floor_db + self.margin_db, self.min_level_db)
        return 1.0 / (1.0 + math.exp(-(level - threshold) / 2.0))


def load_vad(prefer: str = "silero") -> VAD:
    """A new detector: silero when `prefer="silero"` and onnxruntime plus the model are installed,
    else the energy detector."""
    if prefer not in ("silero", "energy"):
        raise ValueError(f"unknown VAD {prefer!r}; expected 'silero' or 'energy'")
    if prefer == "silero" and importlib.util.find_spec("onnxruntime") is not None:
        path = silero_model_path()
        if path is not None:
            return SileroVAD(path)
    return EnergyVAD()


def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:  # (samples, channels) or (channels, samples): average the shorter axis
        audio = audio.mean(axis=1 if audio.shape[0] >= audio.shape[1] else 0)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio, got shape {audio.shape}")
    return audio


def _to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = _mono(audio)
    if sample_rate != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE).astype(np.float32)
    return audio


# A frame whose loudest sample is below this (about -80 dBFS) is digital silence: scored 0 without
# running the model, which makes long silent stretches (pauses, padding, gaps in a recording) nearly free.
SILENT_PEAK = 1e-4


def frame_probabilities(audio: np.ndarray, vad: VAD) -> np.ndarray:
    """Per-frame speech probabilities of 16 kHz mono audio, from a fresh stream state."""
    vad.reset()
    whole = audio.size // FRAME_SAMPLES
    frames = list(audio[: whole * FRAME_SAMPLES].reshape(whole, FRAME_SAMPLES))  # views, no copy
    if audio.size > whole * FRAME_SAMPLES:
        frames.append(audio[whole * FRAME_SAMPLES :])  # process_frame zero-pads the short last frame
    probs = np.zeros(len(frames), dtype=np.float32)
    after_silence = False
    for i, frame in enumerate(frames):
        if frame.size == 0 or float(np.max(np.abs(frame))) < SILENT_PEAK:
            after_silence = True
            continue
        if after_silence:
            vad.reset()  # as after a pause: no stale state carried across the skipped stretch
            after_silence = False
        probs[i] = vad.process_frame(frame)
    vad.reset()
    return probs


def speech_regions(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    threshold: float = 0.5,
    min_silence_s: float = 0.3,
    pad_s: float = 0.1,
    vad: VAD | None = None,
) -> list[tuple[float, float]]:
    """Speech regions of mono audio as (start, end) seconds, sorted and disjoint.

    Hysteresis as in silero's get_speech_timestamps: speech starts at `threshold`, ends after
    `min_silence_s` below `threshold - 0.15`; regions under 0.25 s are dropped; each is padded by
    `pad_s` (within the audio; regions that then touch are merged). `vad` defaults to `load_vad()`;
    a detector passed in is reset before and after, so don't pass one a live stream is using.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be between 0 and 1")
    samples = _to_mono_16k(audio, sample_rate)
    if samples.size == 0:
        return []
    probs = frame_probabilities(samples, vad if vad is not None else load_vad())
    return regions_from_probabilities(
        probs, samples.size / SAMPLE_RATE, threshold=threshold, min_silence_s=min_silence_s, pad_s=pad_s
    )


def regions_from_probabilities(
    probs: np.ndarray, total_s: float, *, threshold: float = 0.5, min_silence_s: float = 0.3, pad_s: float = 0.1
) -> list[tuple[float, float]]:
    """`speech_regions` from `frame_probabilities` already computed (so a caller that also needs the
    probabilities runs the detector once)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be between 0 and 1")
    frame_s = FRAME_SAMPLES / SAMPLE_RATE
    neg_threshold = max(threshold - 0.15, 0.01)
    raw: list[tuple[float, float]] = []
    start: float | None = None
    silence_since: float | None = None
    for i, p in enumerate(probs):
        t = i * frame_s
        if p >= threshold:
            silence_since = None
            if start is None:
                start = t
        elif start is not None and p < neg_threshold:
            if silence_since is None:
                silence_since = t
            if t + frame_s - silence_since >= min_silence_s:
                raw.append((start, silence_since))
                start = silence_since = None
    if start is not None:
        raw.append((start, silence_since if silence_since is not None else total_s))
    regions: list[tuple[float, float]] = []
    for begin, end in raw:
        if end - begin < _MIN_SPEECH_S:
            continue
        begin, end = max(0.0, begin - pad_s), min(total_s, end + pad_s)
        begin, end = round(begin, 3), round(end, 3)
        if regions and begin <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(end, regions[-1][1]))
        else:
            regions.append((begin, end))
    return regions


def split_at_quiet_points(audio: np.ndarray, sample_rate: int, max_seconds: float) -> list[tuple[int, int]]:
    """Cut audio into consecutive (start, end) sample ranges of at most `max_seconds` each.

    The ranges cover every sample with no gap or overlap. Each cut falls at the quietest 50 ms
    stretch in the last 20% of its window, so words are rarely split.
    """
    if not max_seconds > 0 or sample_rate <= 0:
        raise ValueError("max_seconds and sample_rate must be positive")
    samples = _mono(audio)
    n = samples.size
    window = int(max_seconds * sample_rate)
    if window < 1:
        raise ValueError("max_seconds is shorter than one sample")
    if n <= window:
        return [(0, n)] if n else []
    hop = max(1, sample_rate // 100)  # 10 ms energy frames
    count = n // hop
    frames = samples[: count * hop].reshape(count, hop)
    energy = np.einsum("ij,ij->i", frames, frames).astype(np.float64) / hop  # no full-size temporary
    # Smooth over 50 ms so a cut lands in a pause rather than at one zero crossing inside a word.
    energy = np.convolve(energy, np.ones(5) / 5.0, mode="same")
    ranges: list[tuple[int, int]] = []
    start = 0
    while n - start > window:
        lo = (start + int(window * 0.8)) // hop + 1
        hi = (start + window) // hop  # frames ending at or before the window end
        if hi > lo:
            quiet = energy[lo:hi]
            # argmin of the reversed slice: the latest of equally quiet frames keeps chunks long.
            frame = hi - 1 - int(np.argmin(quiet[::-1]))
            cut = frame * hop + hop // 2
        else:
            cut = start + window
        cut = min(max(cut, start + 1), start + window)
        ranges.append((start, cut))
        start = cut
    ranges.append((start, n))
    return ranges

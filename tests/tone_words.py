"""Speech whose words can be read back exactly: each word a tone of its own frequency, for tests of long media.

`ToneWordEngine` transcribes a clip by finding its tone bursts (10 ms energy frames) and naming each by its
frequency; a burst cut by the clip's edge is named `~word`, so a piece boundary through a word shows up in the
text. Its forced aligner gives each word its burst's exact start and end, so subtitle times across hours of
pieces can be checked to the millisecond. Neither knows where the pieces are: the server cuts them.

`python tests/tone_words.py PORT` serves the app with this engine (the restart test kills and restarts it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asr_server.engines import AlignedUnit, AlignItem, TranscribeItem, Transcript
from asr_server.engines.fake import FakeEngine, fake_transcript

RATE = 16_000
FRAME = RATE // 100  # 10 ms
WORDS = [f"w{index:02d}" for index in range(48)]
BASE_HZ, STEP_HZ = 400.0, 50.0  # word i is a tone of 400 + 50 i Hz; a 10 ms frame's FFT resolves 100 Hz, so
FFT_FRAMES = 8  # the frequency is read over 80 ms (12.5 Hz bins)
AMPLITUDE = 0.3


def frequency(word: str) -> float:
    return BASE_HZ + STEP_HZ * WORDS.index(word)


@dataclass(frozen=True)
class Spoken:
    word: str
    start: float  # seconds
    end: float


def script(seconds: float, *, piece_seconds: float, seed: int = 0) -> list[Spoken]:
    """Words with short pauses, and a long word across the end of every window the server's cutter will look
    at (`piece_seconds` after its last cut), so the cut must move back into the pause before that word.
    The cutter takes the latest quietest point of its window: the pause just before the straddling word."""
    rng = np.random.default_rng(seed)
    spoken: list[Spoken] = []
    t, cut = 0.5, 0.0
    while True:
        window_end = cut + piece_seconds
        if t + 1.0 > window_end - 0.8:  # this word straddles the window's end
            start = max(t, window_end - rng.uniform(0.8, 1.5))
            end = window_end + rng.uniform(0.8, 1.5)
            cut = start - 0.03  # where the cutter will cut: the end of the pause before this word
        else:
            start, end = t, t + rng.uniform(0.3, 0.9)
        if end > seconds - 0.3:
            break
        spoken.append(Spoken(WORDS[int(rng.integers(len(WORDS)))], round(start, 3), round(end, 3)))
        t = end + rng.uniform(0.25, 0.6)
    return spoken


def render(spoken: list[Spoken], seconds: float, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Samples [start, stop) of the recording of `spoken` (stop: its end)."""
    stop = int(seconds * RATE) if stop is None else stop
    out = np.zeros(stop - start, dtype=np.float32)
    for word in spoken:
        a, b = max(int(word.start * RATE), start), min(int(word.end * RATE), stop)
        if a < b:
            t = np.arange(a, b) / RATE
            out[a - start : b - start] = AMPLITUDE * np.sin(2 * np.pi * frequency(word.word) * t)
    return out


def write_flac(path: Path, spoken: list[Spoken], seconds: float, block_seconds: float = 600.0) -> Path:
    """The recording as 16 kHz FLAC, written in blocks (hours never sit in memory)."""
    total = int(seconds * RATE)
    block = int(block_seconds * RATE)
    with sf.SoundFile(path, "w", samplerate=RATE, channels=1, format="FLAC", subtype="PCM_16") as out:
        for start in range(0, total, block):
            out.write(render(spoken, seconds, start, min(total, start + block)))
    return path


def _bursts(audio: np.ndarray) -> Iterator[tuple[int, int, bool]]:
    """(first frame, end frame, cut by an edge) of each run of loud 10 ms frames."""
    count = len(audio) // FRAME
    if count == 0:
        return
    energy = np.einsum(
        "ij,ij->i", audio[: count * FRAME].reshape(count, FRAME), audio[: count * FRAME].reshape(count, FRAME)
    )
    loud = energy / FRAME > (AMPLITUDE**2) / 8
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(np.int8), [0]])))
    for first, end in zip(edges[::2], edges[1::2], strict=True):
        cut = first == 0 or end == count
        yield int(first), int(end), bool(cut)


def _name(audio: np.ndarray, first: int, end: int) -> str:
    middle = (first + end) // 2
    lo = max(first, middle - FFT_FRAMES // 2) * FRAME
    window = audio[lo : lo + FFT_FRAMES * FRAME]
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    peak = np.fft.rfftfreq(len(window), 1 / RATE)[int(np.argmax(spectrum))]
    return WORDS[int(np.clip(round((peak - BASE_HZ) / STEP_HZ), 0, len(WORDS) - 1))]


def read_words(audio: np.ndarray) -> list[tuple[str, float, float]]:
    """(word, start, end) in seconds from the clip's start; a word cut by an edge is `~word`."""
    audio = np.asarray(audio, dtype=np.float32)
    return [
        (("~" if cut else "") + _name(audio, first, end), first * FRAME / RATE, end * FRAME / RATE)
        for first, end, cut in _bursts(audio)
    ]


class ToneWordEngine(FakeEngine):
    """Reads tone words; `delay` seconds per item make runs long enough to interrupt."""

    name = "tone-words"

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__("tone-words")
        self.delay = delay
        self.items_seen = 0

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        self.batches.append(len(items))
        self.items_seen += len(items)
        if self.delay:
            time.sleep(self.delay * len(items))
        return [fake_transcript(" ".join(w for w, _, _ in read_words(item.audio)), "English") for item in items]

    @property
    def supports_alignment(self) -> bool:
        return True

    def align(self, items: list[AlignItem]) -> list[list[AlignedUnit]]:
        results = []
        for item in items:
            heard = read_words(item.audio)
            said = item.text.split()
            assert [w for w, _, _ in heard] == said, "the aligner got a text that is not the clip's"
            results.append([AlignedUnit(text=w, start=a, end=b) for w, a, b in heard])
        return results


def main() -> None:  # pragma: no cover - run as a child process by the restart test
    import uvicorn

    from asr_server.config import Settings
    from asr_server.server import create_app

    port, delay = int(sys.argv[1]), float(sys.argv[2])
    app = create_app(Settings(), engine=ToneWordEngine(delay=delay))
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()

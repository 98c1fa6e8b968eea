"""Synthetic conversations for diarization tests and benchmarks: espeak-ng voices taking turns.

Each voice is an espeak-ng voice and variant with its own pitch and speed; turns alternate between
speakers with pauses, and one turn may start before the previous one ends (an overlap). The reference
turns are where each utterance's sound actually is (espeak's leading and trailing silence trimmed), as a
`pyannote.core.Annotation`.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from asr_server.media import SAMPLE_RATE
from asr_server.media.audio import resample

ESPEAK = "espeak-ng"
PEAK = 0.45  # every utterance's peak, so two overlapping voices stay within [-1, 1]


@dataclass(frozen=True)
class Voice:
    name: str
    voice: str  # espeak-ng voice+variant
    pitch: int  # 0-99
    speed: int  # words per minute

    def args(self) -> list[str]:
        return ["-v", self.voice, "-p", str(self.pitch), "-s", str(self.speed)]


# Clearly different voices: accent, variant (formants, breathiness), pitch and speed all differ. To CAM++,
# ben, gwen and carl are the most distinct three (mean cosine between their clips 0.41-0.57, same voice
# 0.80-0.84); ben and ed (both low male voices) the closest pair (0.71).
VOICES: tuple[Voice, ...] = (
    Voice("ben", "en-us+m3", 30, 160),
    Voice("fiona", "en-gb+f4", 80, 150),
    Voice("carl", "en-gb-scotland+m7", 55, 175),
    Voice("dana", "en-029+f2", 65, 140),
    Voice("ed", "en-gb-x-rp+m1", 20, 150),
    Voice("gwen", "en-us+f5", 90, 170),
)


def voices(*names: str) -> list[Voice]:
    """The voices of these names, in this order."""
    by_name = {voice.name: voice for voice in VOICES}
    return [by_name[name] for name in names]


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


_SUBJECTS = _phrases(
    "the new manager|my neighbour|our team|the committee|a friend of mine|the engineer|the old teacher|"
    "everyone in the office|the driver|her brother|the council|the pilot"
)
_VERBS = _phrases(
    "wants to move|decided to check|forgot to send|is planning to fix|has finished|will present|"
    "tried to explain|keeps asking about|ordered|cancelled|agreed to review|is still waiting for"
)
_OBJECTS = _phrases(
    "the quarterly report|the kitchen schedule|a bigger delivery van|the broken window|"
    "the budget for next year|the garden fence|a new coffee machine|the train tickets|"
    "the missing invoices|the weekend rota|the conference slides|the parking permits"
)
_TAILS = _phrases(
    "before the meeting on Thursday|as soon as the rain stops|without telling anybody|"
    "because the numbers looked wrong|after lunch tomorrow|if nobody objects|by the end of the month|"
    "while the shop is closed|once the paperwork arrives|for the third time this week"
)


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def sentences(count: int, seed: int) -> list[str]:
    """`count` varied English sentences of 8 to 14 words, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [
        _upper_first(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}.")
        for _ in range(count)
    ]


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def speak(text: str, voice: Voice) -> np.ndarray:
    """espeak-ng's rendering of `text` as 16 kHz mono float32, silence trimmed, peak at PEAK."""
    wav = subprocess.run([ESPEAK, *voice.args(), "--stdout", text], capture_output=True, check=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    samples = resample(samples, rate)
    loud = np.flatnonzero(np.abs(samples) > 0.02 * float(np.max(np.abs(samples))))
    samples = samples[loud[0] : loud[-1] + 1]
    return (PEAK * samples / float(np.max(np.abs(samples)))).astype(np.float32)


@dataclass(frozen=True)
class Utterance:
    speaker: str
    start: float
    end: float
    audio: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Conversation:
    audio: np.ndarray = field(repr=False)
    utterances: tuple[Utterance, ...]

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLE_RATE

    @property
    def speakers(self) -> list[str]:
        return list(dict.fromkeys(u.speaker for u in self.utterances))

    def reference(self, uri: str = "conversation"):  # -> pyannote.core.Annotation
        from pyannote.core import Annotation, Segment

        annotation = Annotation(uri=uri)
        for index, utterance in enumerate(self.utterances):
            annotation[Segment(utterance.start, utterance.end), index] = utterance.speaker
        return annotation


def build_conversation(
    voices: Sequence[Voice],
    *,
    seconds: float = 30.0,
    seed: int = 0,
    overlap: bool = True,
    pause: tuple[float, float] = (0.4, 1.0),
    lead_in: float = 0.5,
) -> Conversation:
    """Turns of about `seconds` in all: each turn one sentence by a speaker other than the last one (the
    first turns go round every voice once), separated by pauses drawn from `pause`; with `overlap`, the turn
    nearest the middle starts 0.8 s before the previous one ends."""
    if len(voices) < 2:
        raise ValueError("a conversation needs two voices or more")
    rng = np.random.default_rng(seed)
    texts = iter(sentences(10_000, seed))
    placed: list[tuple[Voice, float, np.ndarray]] = []
    cursor = lead_in
    previous: Voice | None = None
    while cursor < seconds - 1.0:
        if len(placed) < len(voices):
            voice = voices[len(placed)]
        else:
            voice = voices[int(rng.choice([i for i, v in enumerate(voices) if v is not previous]))]
        audio = speak(next(texts), voice)
        placed.append((voice, cursor, audio))
        cursor += audio.size / SAMPLE_RATE + float(rng.uniform(*pause))
        previous = voice
    if overlap and len(placed) >= 3:
        middle = min(range(1, len(placed)), key=lambda i: abs(placed[i][1] - seconds / 2))
        shift = (placed[middle][1] - placed[middle - 1][1] - placed[middle - 1][2].size / SAMPLE_RATE) + 0.8
        placed = [(v, s - shift if i >= middle else s, a) for i, (v, s, a) in enumerate(placed)]
    total = max(round(start * SAMPLE_RATE) + audio.size for _, start, audio in placed) + SAMPLE_RATE // 2
    mix = np.zeros(total, np.float32)
    utterances = []
    for voice, start, audio in placed:
        first = round(start * SAMPLE_RATE)
        mix[first : first + audio.size] += audio
        utterances.append(Utterance(voice.name, first / SAMPLE_RATE, (first + audio.size) / SAMPLE_RATE, audio))
    return Conversation(audio=np.clip(mix, -1.0, 1.0), utterances=tuple(utterances))


def concatenate(parts: Sequence[Conversation], gap: float = 1.0) -> Conversation:
    """The conversations one after another, `gap` seconds apart (speaker names are kept, so parts with
    the same voices share speakers)."""
    pieces: list[np.ndarray] = []
    utterances: list[Utterance] = []
    offset = 0
    silence = np.zeros(int(gap * SAMPLE_RATE), np.float32)
    for part in parts:
        base = offset / SAMPLE_RATE
        utterances += [Utterance(u.speaker, u.start + base, u.end + base, u.audio) for u in part.utterances]
        pieces += [part.audio, silence]
        offset += part.audio.size + silence.size
    return Conversation(audio=np.concatenate(pieces), utterances=tuple(utterances))

"""Who said what: speaker turns from the diarizer joined with a timed transcription's words.

Transcription (with its word timings: the forced aligner in accurate mode, the heuristic in fast mode) and
diarization run at the same time, on their own executors. Each word then gets the speaker whose turns cover
most of it, so a speaker change always falls on a word boundary; cues are rebuilt so that none holds two
speakers' words, and diarized_json's segments are each one speaker's run of words.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import numpy as np

from asr_server.diarization.assign import label_speakers, speaker_for_span
from asr_server.diarization.base import Diarization, DiarizationUnavailable
from asr_server.diarization.service import DiarizationService
from asr_server.media.audio import DecodedAudio
from asr_server.services.subtitles import SubtitleMode, SubtitlePipeline, TimedTranscription
from asr_server.subtitle import CueRules, WordTiming, build_cues, join_words

# A pause this long ends a diarized_json segment even when the same speaker goes on.
SEGMENT_PAUSE_S = 2.0


@dataclass(frozen=True)
class SpeakerOptions:
    """What a request asks of diarization: known speakers (name -> reference clip) and the speaker count."""

    references: dict[str, np.ndarray] = field(default_factory=dict)
    num_speakers: int | None = None


@dataclass(frozen=True)
class SpeakerSegment:
    """One speaker's run of words: a diarized_json segment."""

    start: float
    end: float
    text: str
    speaker: str


def attribute_words(words: list[WordTiming], diarization: Diarization, names: dict[str, str]) -> list[WordTiming]:
    """Each word with its speaker's public label. A word no turn comes near (a diarizer miss) takes the speaker
    of the word before it (or after it, at the start), so no word is left without one."""
    turns = diarization.turns
    labels = [speaker_for_span(w.start, w.end, turns) for w in words]
    public = [names.get(label) if label is not None else None for label in labels]
    known = [i for i, label in enumerate(public) if label is not None]
    if not known:
        fallback = names.get(diarization.speakers[0]) if diarization.speakers else "A"
        return [replace(w, speaker=fallback) for w in words]
    first = public[known[0]]
    filled: list[str | None] = []
    for label in public:
        filled.append(label if label is not None else (filled[-1] if filled else first))
    return [replace(w, speaker=label) for w, label in zip(words, filled, strict=True)]


def speaker_segments(words: list[WordTiming], pause: float = SEGMENT_PAUSE_S) -> list[SpeakerSegment]:
    """Runs of one speaker's words, also split at pauses longer than `pause`."""
    runs: list[list[WordTiming]] = []
    for word in words:
        if not word.text.strip():
            continue
        last = runs[-1][-1] if runs else None
        if last is None or last.speaker != word.speaker or word.start - last.end > pause:
            runs.append([word])
        else:
            runs[-1].append(word)
    return [
        SpeakerSegment(
            start=run[0].start, end=max(w.end for w in run), text=join_words(run).strip(), speaker=run[0].speaker or ""
        )
        for run in runs
    ]


class SpeakerPipeline:
    """Timed transcription with speakers: the subtitle pipeline and the diarizer side by side."""

    def __init__(self, subtitles: SubtitlePipeline, diarization: DiarizationService, threshold: float) -> None:
        self._subtitles = subtitles
        self._diarization = diarization
        self._threshold = threshold

    def ensure_available(self) -> None:
        """Raise the 503 (naming the extra or setting) when diarization cannot run here."""
        reason = self._diarization.unavailable_reason()
        if reason:
            raise DiarizationUnavailable(reason)

    async def reference_embeddings(self, references: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(references)
        embeddings = await self._diarization.embed_many([references[name] for name in names])
        return dict(zip(names, embeddings, strict=True))

    async def run(
        self,
        audio: DecodedAudio,
        *,
        language: str | None,
        context: str,
        mode: SubtitleMode,
        rules: CueRules,
        options: SpeakerOptions,
        measure_speech: bool = False,
    ) -> TimedTranscription:
        self.ensure_available()
        timed, diarization, references = await asyncio.gather(
            self._subtitles.run(
                audio, language=language, context=context, mode=mode, rules=rules, measure_speech=measure_speech
            ),
            self._diarization.analyse(audio.samples, num_speakers=options.num_speakers),
            self.reference_embeddings(options.references),
        )
        names = label_speakers(
            list(diarization.turns),
            turn_embeddings=diarization.embeddings,
            references=references or None,
            threshold=self._threshold,
        )
        words = attribute_words(timed.words, diarization, names)
        cues = await asyncio.to_thread(build_cues, words, audio.duration, rules)
        return replace(timed, words=words, cues=cues)

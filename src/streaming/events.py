"""What a `StreamSession` reports, independent of any wire protocol (the routers translate these)."""

from __future__ import annotations

from dataclasses import dataclass

from asr_server.streaming.segmenter import CloseReason
from asr_server.subtitle import WordTiming


@dataclass(frozen=True)
class SpeechStarted:
    segment_id: int
    start: float  # seconds from the start of the stream


@dataclass(frozen=True)
class SpeechStopped:
    segment_id: int
    end: float
    reason: CloseReason


@dataclass(frozen=True)
class Partial:
    """Unstable text of the open utterance `segment_id`, covering audio `[start, end)`."""

    segment_id: int
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Final:
    """Committed text of utterance `segment_id`; it never changes and its audio is never decoded again."""

    segment_id: int
    text: str
    language: str | None  # the model's language name ("English"), None when unknown
    start: float
    end: float
    delay: float  # seconds from the arrival of the utterance's last speech to this result
    words: tuple[WordTiming, ...] | None = None  # fast timing, on the stream's clock; None: timing "none"
    speaker: str | None = None  # the stream's label of the voice ("A"), when speakers were asked for


@dataclass(frozen=True)
class Words:
    """The forced aligner's words of final `segment_id`, which replace the final's (fast) ones; `timing` is
    "fast" when the aligner failed on it (the words are then the final's own)."""

    segment_id: int
    words: tuple[WordTiming, ...]
    timing: str


@dataclass(frozen=True)
class SessionError:
    code: str
    message: str
    segment_id: int | None = None
    fatal: bool = False


SessionEvent = SpeechStarted | SpeechStopped | Partial | Final | Words | SessionError

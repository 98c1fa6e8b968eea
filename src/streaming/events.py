"""What a `StreamSession` reports, independent of any wire protocol (the routers translate these)."""

from __future__ import annotations

from dataclasses import dataclass

from asr_server.streaming.segmenter import CloseReason


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


@dataclass(frozen=True)
class SessionError:
    code: str
    message: str
    segment_id: int | None = None
    fatal: bool = False


SessionEvent = SpeechStarted | SpeechStopped | Partial | Final | SessionError

"""The live session, independent of any wire protocol: segmenter, committed text, events and metrics. No FastAPI:
the WebSocket routes in `api/` adapt it to their protocols.
"""

from asr_server.streaming.events import (
    Final,
    Partial,
    SessionError,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
    Words,
)
from asr_server.streaming.metrics import StreamLease, StreamMetrics
from asr_server.streaming.segmenter import SegmenterConfig
from asr_server.streaming.session import StreamConfig, StreamSession, TranscribeFn
from asr_server.streaming.words import SpeakerLabels, WordAligner, WordTimingMode

__all__ = [
    "Final",
    "Partial",
    "SegmenterConfig",
    "SessionError",
    "SessionEvent",
    "SpeakerLabels",
    "SpeechStarted",
    "SpeechStopped",
    "StreamConfig",
    "StreamLease",
    "StreamMetrics",
    "StreamSession",
    "TranscribeFn",
    "WordAligner",
    "WordTimingMode",
    "Words",
]

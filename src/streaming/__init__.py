"""The live session, independent of any wire protocol: segmenter, committed text, events and metrics. No FastAPI:
the WebSocket routes in `api/` adapt it to their protocols.
"""

from asr_server.streaming.events import Final, Partial, SessionError, SessionEvent, SpeechStarted, SpeechStopped
from asr_server.streaming.metrics import StreamLease, StreamMetrics, StreamRegistry
from asr_server.streaming.segmenter import FRAME_SAMPLES, SAMPLE_RATE, Segmenter, SegmenterConfig, Started, Utterance
from asr_server.streaming.session import SessionStats, StreamConfig, StreamSession, TranscribeFn

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "Final",
    "Partial",
    "Segmenter",
    "SegmenterConfig",
    "SessionError",
    "SessionEvent",
    "SessionStats",
    "SpeechStarted",
    "SpeechStopped",
    "Started",
    "StreamConfig",
    "StreamLease",
    "StreamMetrics",
    "StreamRegistry",
    "StreamSession",
    "TranscribeFn",
    "Utterance",
]

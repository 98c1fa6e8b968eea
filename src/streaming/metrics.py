"""Live-stream bookkeeping shared by every streaming endpoint: the concurrency limit and the counters.

One `StreamRegistry` per app (on `AppServices.streams`). `snapshot()` returns plain numbers so a
later /metrics exporter can publish them without knowing the sessions.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


class _Lagging(Protocol):
    def lag_seconds(self) -> float: ...


@dataclass
class StreamMetrics:
    """Counters since start (monotonic) plus a window of recent final delays for percentiles."""

    sessions_total: int = 0
    sessions_rejected: int = 0
    audio_seconds: float = 0.0  # stream audio received
    partial_decoded_seconds: float = 0.0  # audio sent to the model for partials
    final_decoded_seconds: float = 0.0  # audio sent to the model for finals
    aligned_seconds: float = 0.0  # audio sent to the forced aligner for finals' words
    partials_emitted: int = 0
    partials_dropped: int = 0  # stale (superseded or outrun by the final) or failed
    finals_emitted: int = 0
    errors: int = 0
    max_lag_seconds: float = 0.0
    finals_pending: int = 0  # closed utterances waiting for the model, all streams
    recent_final_delays: deque[float] = field(default_factory=lambda: deque(maxlen=1024))

    def record_final(self, delay: float, lag: float) -> None:
        self.finals_emitted += 1
        self.recent_final_delays.append(delay)
        self.max_lag_seconds = max(self.max_lag_seconds, lag)

    @property
    def decoded_seconds(self) -> float:
        return self.partial_decoded_seconds + self.final_decoded_seconds


@dataclass
class SessionStats:
    """One session's own counters."""

    audio_seconds: float = 0.0
    partial_decoded_seconds: float = 0.0
    final_decoded_seconds: float = 0.0
    partials: int = 0
    partials_dropped: int = 0
    finals: int = 0
    final_ranges: list[tuple[int, int]] = field(default_factory=list)  # decoded final sample ranges

    @property
    def decoded_seconds(self) -> float:
        return self.partial_decoded_seconds + self.final_decoded_seconds


class StreamLease:
    """One admitted stream; `release()` (idempotent) frees its slot."""

    def __init__(self, registry: StreamRegistry) -> None:
        self._registry = registry
        self._released = False
        self.session: _Lagging | None = None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._registry._release(self)


class StreamRegistry:
    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent
        self.metrics = StreamMetrics()
        self._leases: set[StreamLease] = set()

    @property
    def active(self) -> int:
        return len(self._leases)

    def try_acquire(self) -> StreamLease | None:
        """A slot for a new stream, or None when `max_concurrent` streams are live."""
        if len(self._leases) >= self.max_concurrent:
            self.metrics.sessions_rejected += 1
            return None
        lease = StreamLease(self)
        self._leases.add(lease)
        self.metrics.sessions_total += 1
        return lease

    def _release(self, lease: StreamLease) -> None:
        self._leases.discard(lease)

    def current_lag_seconds(self) -> float:
        """How far behind the most-behind live stream is (age of its oldest undecoded final)."""
        return max((lease.session.lag_seconds() for lease in self._leases if lease.session), default=0.0)

    def snapshot(self) -> dict[str, float]:
        """Every gauge and counter as a flat name → number mapping."""
        m = self.metrics
        delays = sorted(m.recent_final_delays)
        return {
            "streams_active": float(self.active),
            "streams_max": float(self.max_concurrent),
            "streams_total": float(m.sessions_total),
            "streams_rejected_total": float(m.sessions_rejected),
            "stream_audio_seconds_total": m.audio_seconds,
            "stream_decoded_seconds_total": m.decoded_seconds,
            "stream_partial_decoded_seconds_total": m.partial_decoded_seconds,
            "stream_final_decoded_seconds_total": m.final_decoded_seconds,
            "stream_aligned_seconds_total": m.aligned_seconds,
            "stream_decode_ratio": m.decoded_seconds / m.audio_seconds if m.audio_seconds else 0.0,
            "stream_partials_total": float(m.partials_emitted),
            "stream_partials_dropped_total": float(m.partials_dropped),
            "stream_finals_total": float(m.finals_emitted),
            "stream_errors_total": float(m.errors),
            "stream_finals_pending": float(m.finals_pending),
            "stream_lag_seconds": self.current_lag_seconds(),
            "stream_lag_seconds_max": m.max_lag_seconds,
            "stream_final_delay_p50_seconds": _quantile(delays, 0.5),
            "stream_final_delay_p95_seconds": _quantile(delays, 0.95),
        }


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(q * 100) - 1]

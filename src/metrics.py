"""Prometheus metrics (prometheus-client), one registry per app so apps and tests never share state.

Counters and histograms are updated where things happen (middleware, worker, translation); gauges that
mirror state (queue depth, model loaded, active streams) are read at scrape time by a custom collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2, 5)


class _StateCollector(Collector):
    """Gauges read from live objects at scrape time."""

    def __init__(self, readers: dict[str, tuple[str, Callable[[], float]]]) -> None:
        self._readers = readers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (documentation, read) in self._readers.items():
            try:
                value = float(read())
            except Exception:  # a scrape must never fail because one reading did
                continue
            yield GaugeMetricFamily(name, documentation, value=value)


class _SnapshotCollector(Collector):
    """One gauge per key of a dict of numbers read at scrape time (e.g. the stream registry's snapshot)."""

    def __init__(self, prefix: str, documentation: str, read: Callable[[], dict[str, float]]) -> None:
        self._prefix, self._documentation, self._read = prefix, documentation, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            values = self._read()
        except Exception:
            return
        for key, value in values.items():
            yield GaugeMetricFamily(f"{self._prefix}{key}", f"{self._documentation}: {key}", value=float(value))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "asr_http_requests_total", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "asr_http_request_seconds", "HTTP request latency by route", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_wait_seconds = Histogram(
            "asr_queue_wait_seconds", "Time jobs waited in the queue", ["kind"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "asr_batch_size", "Jobs per engine batch", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "asr_inference_seconds", "Engine time per batch", ["kind"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.real_time_factor = Histogram(
            "asr_real_time_factor", "Engine seconds per audio second of a batch", buckets=RTF_BUCKETS, registry=r
        )
        self.audio_seconds = Counter("asr_audio_seconds_total", "Audio seconds transcribed", registry=r)
        self.jobs_failed = Counter("asr_jobs_failed_total", "Jobs that ended in an error", ["kind", "code"], registry=r)
        self.model_load_seconds = Gauge("asr_model_load_seconds", "Duration of the last model load", registry=r)
        self.warmup_seconds = Gauge("asr_warmup_seconds", "Duration of the last warm-up", registry=r)
        self.translation_calls = Counter(
            "asr_translation_requests_total", "Translation requests by outcome", ["outcome"], registry=r
        )

    def add_state(self, readers: dict[str, tuple[str, Callable[[], float]]]) -> None:
        """Register gauges computed at scrape time: {name: (help, reader)}."""
        self.registry.register(_StateCollector(readers))

    def add_snapshot(self, prefix: str, documentation: str, read: Callable[[], dict[str, float]]) -> None:
        """Register a dict of numbers read at scrape time, one gauge per key, named PREFIX+key."""
        self.registry.register(_SnapshotCollector(prefix, documentation, read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def gpu_memory_bytes() -> float:
    """Memory allocated by torch on the current CUDA device; 0 without torch loaded or without CUDA."""
    import sys

    torch = sys.modules.get("torch")  # never import torch just to report that it is not used
    if torch is None or not torch.cuda.is_available():
        return 0.0
    return float(torch.cuda.memory_allocated())

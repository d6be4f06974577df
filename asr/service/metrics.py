"""Prometheus metrics and the live throughput shown in the system tab.

Each app gets its own registry (no module-level collectors), so several apps in one process (tests)
never collide.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from asr.service.scheduler import BatchStats

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Counters for requests, audio and batches, plus a rolling throughput window."""

    def __init__(self, queue_depth: Callable[[], float], window_s: float = 60.0) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "asr_requests", "HTTP and UI requests handled.", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "asr_request_latency_seconds",
            "Time from request arrival to response.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "asr_audio_seconds", "Seconds of audio transcribed.", registry=self.registry
        )
        self.batch_size = Histogram(
            "asr_batch_size", "Requests per engine call.", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.batch_seconds = Histogram(
            "asr_batch_seconds", "Engine time per batch.", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.batch_failures = Counter(
            "asr_batch_failures", "Engine calls that raised.", registry=self.registry
        )
        self.queue_depth = Gauge(
            "asr_queue_depth", "Requests waiting for the engine.", registry=self.registry
        )
        self.queue_depth.set_function(queue_depth)
        self._window_s = window_s
        self._recent: deque[tuple[float, float, float]] = deque()  # (finished_at, audio_s, engine_s)
        self._lock = threading.Lock()

    def observe_batch(self, stats: BatchStats) -> None:
        """Scheduler hook: called once per engine call."""
        self.batch_size.observe(stats.size)
        self.batch_seconds.observe(stats.elapsed_s)
        if not stats.ok:
            self.batch_failures.inc()
            return
        self.audio_seconds.inc(stats.audio_s)
        with self._lock:
            self._recent.append((time.monotonic(), stats.audio_s, stats.elapsed_s))

    def observe_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def throughput(self) -> dict[str, float]:
        """Audio seconds per wall second over the window, and per engine second (speed when busy)."""
        now = time.monotonic()
        with self._lock:
            while self._recent and now - self._recent[0][0] > self._window_s:
                self._recent.popleft()
            audio = sum(r[1] for r in self._recent)
            engine = sum(r[2] for r in self._recent)
            batches = len(self._recent)
        return {
            "window_s": self._window_s,
            "audio_s": audio,
            "batches": batches,
            "x_realtime_wall": audio / self._window_s,
            "x_realtime_engine": audio / engine if engine > 0 else 0.0,
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)

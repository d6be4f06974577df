"""Recent durations by stage, for /api/info: where a request's latency went under load."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np


class StageTimes:
    """The last `keep` durations of each stage (thread-safe: stages end on worker threads too)."""

    def __init__(self, keep: int = 4096) -> None:
        self._keep = keep
        self._times: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._times.setdefault(stage, deque(maxlen=self._keep)).append(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {n, p50_ms, p95_ms, max_ms}} over each stage's last `keep` samples."""
        with self._lock:
            copies = {stage: list(times) for stage, times in self._times.items()}
        out = {}
        for stage, times in copies.items():
            ms = np.asarray(times) * 1000
            p50, p95 = np.percentile(ms, (50, 95))
            out[stage] = {"n": len(ms), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1),
                          "max_ms": round(float(ms.max()), 1)}  # fmt: skip
        return out

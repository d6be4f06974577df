"""Several CPU engines side by side (`engine.cpu_processes`).

One engine on many cores scales poorly: its batches are a few clips (a CPU batch pads at most 10%
of its audio), and most of a forward pass is products of a few hundred rows, too small to keep 16
threads busy; measured on a 16-core Xeon, 2 to 16 threads gained 1.7x while funasr gained 2.6x
(BENCHMARKS.md, CPU). Here N engine processes (`EngineProcess`, each its own model copy, its own
torch threads: the usable cores divided among them) share the work: a call's clips are sorted by
length and cut into N runs of about equal audio, each run recognised by a free child, the results
put back in the caller's order. A clip's result does not depend on what else is in its batch (the
engine's rule), so sharding changes no output. Concurrent calls queue for free children.

A child that dies fails the call with EngineRestartedError, as one engine process does, and is
started again for its next run.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from asr.engine.batching import check_audio, per_item_hotwords
from asr.engine.process import EngineProcess
from asr.errors import EngineFailedError
from asr.settings import EngineSettings


def auto_processes(cores: int) -> int:
    """How many CPU engines `cpu_processes: 0` runs on `cores` cores: one below 8 cores (where the
    pool's second model copy and its process cost more than a wider batch wins), else one per 4."""
    return 1 if cores < 8 else cores // 4


def cpu_processes(settings: EngineSettings, cores: int) -> int:
    return settings.cpu_processes or auto_processes(cores)


def shards(lengths: Sequence[int], n: int) -> list[list[int]]:
    """Indices of the clips cut into at most `n` runs of neighbouring lengths with about equal
    audio each (neighbours: a child's batches pad little; equal audio: the children finish
    together). A clip goes to the run its middle sample falls in, counting the clips' audio
    longest first, so a clip longer than a run's share gets a run of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    total = sum(lengths) or 1
    runs: list[list[int]] = [[] for _ in range(n)]
    before = 0
    for i in order:
        runs[min(n - 1, int((before + lengths[i] / 2) * n / total))].append(i)
        before += lengths[i]
    return [r for r in runs if r]


class EnginePool:
    """`n` `EngineProcess`es behind the engine's `transcribe` and `info`. Thread-safe."""

    def __init__(self, settings: EngineSettings, n: int, threads_each: int) -> None:
        if n < 2:
            raise ValueError("a pool of fewer than two engines is one EngineProcess")
        child = settings.model_copy(update={"num_threads": threads_each, "process": "on"})
        self.settings = settings
        self._children: list[EngineProcess] = []
        # All at once: each child's start is mostly CPU (imports, reading and quantizing the
        # model), and one after the other four full-model children took 29 s on a 16-core box.
        with ThreadPoolExecutor(n) as starting:
            futures = [starting.submit(EngineProcess, child) for _ in range(n)]
        errors = []
        for future in futures:
            try:
                self._children.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - raised once every child is accounted for
                errors.append(exc)
        if errors:
            self.close()
            raise errors[0]
        self._free: queue.SimpleQueue[EngineProcess] = queue.SimpleQueue()
        for c in self._children:
            self._free.put(c)
        self._runs = ThreadPoolExecutor(n, thread_name_prefix="asr-engine-pool")
        self._threads_each = threads_each
        self._closed = False

    @property
    def engines(self) -> int:
        """How many engines a call is split among (the scheduler merges that many batches)."""
        return len(self._children)

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self._children)

    def info(self) -> dict[str, Any]:
        info = self._children[0].info()
        info["process"] = [c.info().get("process") for c in self._children]
        info["cpu_processes"] = len(self._children)
        info["threads_per_process"] = self._threads_each
        return info

    def close(self) -> None:
        self._closed = True
        for c in self._children:
            c.close()
        runs = getattr(self, "_runs", None)
        if runs is not None:
            runs.shutdown(wait=False)

    def transcribe(
        self,
        audios: Sequence[np.ndarray],
        hotwords: Sequence[str] | Sequence[Sequence[str]] | None = None,
    ) -> list[Any]:
        if self._closed:
            raise EngineFailedError("The engine pool was closed (the service is stopping).")
        # Errors name the caller's index, not an index inside a run, so the scan for NaN is here
        # (a fraction of a millisecond per 30 s clip, against a CPU forward's hundreds).
        clips = [check_audio(audio, i) for i, audio in enumerate(audios)]
        lists = per_item_hotwords(hotwords, len(clips))
        runs = shards([len(c) for c in clips], len(self._children))
        if len(runs) == 1:
            return self._run(clips, lists)
        futures = [self._runs.submit(self._run, [clips[i] for i in run], [lists[i] for i in run]) for run in runs]
        out: list[Any] = [None] * len(clips)
        error: BaseException | None = None
        for run, future in zip(runs, futures, strict=True):
            try:
                for i, result in zip(run, future.result(), strict=True):
                    out[i] = result
            except BaseException as exc:  # noqa: BLE001 - raised after every run has ended
                error = error or exc
        if error is not None:
            raise error
        return out

    def _run(self, clips: list[np.ndarray], lists: list[list[str]]) -> list[Any]:
        child = self._free.get()
        try:
            return child.transcribe(clips, lists)
        finally:
            self._free.put(child)

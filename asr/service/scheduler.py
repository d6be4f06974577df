"""One scheduler in front of the engine: batches concurrent requests across users.

Every transcription the service performs (UI, HTTP API, batch jobs, live captions) is submitted
here. Requests wait in an asyncio priority queue as ``(item, future)`` pairs, in order of
arrival within three priorities (`URGENT`: a live caption's final text, someone is watching
for it; `NORMAL`; `OPTIONAL`: live partial text, which the next partial replaces); a single
consumer takes the first waiting item, then collects more for at most ``max_wait_ms`` (or
until ``max_batch_size`` items) and runs them as ONE ``transcribe(audios, hotwords_per_item)``
call on a worker thread. While that batch runs, new requests accumulate, so under load batches
fill up by themselves and at low load a request waits no longer than the short window.

The GPU is therefore used by exactly one thread, the web layer never holds it, and nobody
sleep-polls: the consumer blocks on the queue and callers await their futures.

Background callers (batch jobs, the command line: they wait for room instead of getting 503) may
fill at most half of the queue. A long recording puts its speech segments in by the hundred; if
they could take every place, an interactive request arriving behind them would be refused as
"busy" although the work ahead of it is nobody's waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from asr.errors import EngineRestartedError, QueueFullError
from asr.service.stages import StageTimes

log = logging.getLogger(__name__)

R = TypeVar("R")

URGENT, NORMAL, OPTIONAL = 0, 1, 2
"""Request priorities: lower is served first; equal ones in order of arrival."""
_PRIORITY_NAMES = ("urgent", "normal", "optional")

# The engine call: audios plus one hotword list per audio -> results aligned with the inputs.
TranscribeFn = Callable[[Sequence[np.ndarray], Sequence[Sequence[str]]], Sequence[R]]


@dataclass(frozen=True)
class SchedulerOptions:
    """How requests are grouped into engine calls."""

    max_batch_size: int = 32
    """Most requests merged into one engine call (the engine splits further by its audio budget)."""
    max_wait_ms: float = 8.0
    """How long the consumer waits for companions after the first request of a batch arrives."""
    max_queue: int = 256
    """Requests allowed to wait; one more is refused with QueueFullError."""
    retry_after_s: float = 1.0
    """What a refused client is told to wait before retrying."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}.")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {self.max_wait_ms}.")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {self.max_queue}.")


@dataclass(frozen=True)
class BatchStats:
    """What one engine call did; handed to the ``on_batch`` observer (metrics, system tab)."""

    size: int
    audio_s: float
    elapsed_s: float
    ok: bool


@dataclass
class _Request(Generic[R]):
    audio: np.ndarray
    hotwords: tuple[str, ...]
    future: asyncio.Future[R]
    priority: int = NORMAL
    enqueued_at: float = field(default_factory=time.perf_counter)
    background: bool = False  # holds one of the queue's places for background work


_Entry = tuple[int, int, "_Request[Any]"]  # (priority, arrival number, request)


class Scheduler(Generic[R]):
    """Dynamic batcher around a thread-safe ``transcribe`` callable.

    Use from one event loop: ``await start()``, ``await submit(...)`` from any task, ``await stop()``.
    """

    def __init__(
        self,
        transcribe: TranscribeFn[R],
        options: SchedulerOptions | None = None,
        *,
        sample_rate: int = 16000,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._transcribe = transcribe
        self.options = options or SchedulerOptions()
        self._sample_rate = sample_rate
        self._on_batch = on_batch
        self._queue: asyncio.PriorityQueue[_Entry] | None = None
        self._background_room: asyncio.Semaphore | None = None
        self._arrivals = itertools.count()
        self._consumer: asyncio.Task[None] | None = None
        # One worker thread: the engine is thread-safe, but the device is served by one
        # batch at a time; parallel calls would only fight over GPU memory.
        self._executor: ThreadPoolExecutor | None = None
        self.batches_run = 0
        self.items_run = 0
        self.busy = False
        # Batches taken off the queue and finished (a failed batch's one-by-one retries count
        # as part of it): a caller that withdrew a request knows when no engine call can still
        # read its audio (asr/service/front.py lends samples from another process's memory).
        self.batches_started = 0
        self.batches_finished = 0
        self.stages = StageTimes()
        """wait_urgent / wait_normal / wait_optional: from submit to the start of the request's
        engine call; engine: one engine call; engine_with_urgent: a call that carried URGENT work."""

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not counting the batch being run)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def running(self) -> bool:
        return self._consumer is not None and not self._consumer.done()

    async def start(self) -> None:
        """Start the consumer task on the running event loop."""
        if self.running:
            return
        self._queue = asyncio.PriorityQueue(maxsize=self.options.max_queue)
        self._background_room = asyncio.Semaphore(max(1, self.options.max_queue // 2))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-engine")
        self._consumer = asyncio.create_task(self._consume(), name="asr-scheduler")

    async def stop(self) -> None:
        """Stop consuming; requests still waiting are cancelled."""
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None
        if self._queue is not None:
            while not self._queue.empty():
                *_, req = self._queue.get_nowait()
                if not req.future.done():
                    req.future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(
        self, audio: np.ndarray, hotwords: Sequence[str] = (), *, block: bool = False, priority: int = NORMAL
    ) -> R:
        """Queue one clip and wait for its result.

        ``block=False`` (interactive requests) raises QueueFullError at once when the queue is
        full; ``block=True`` (background jobs) waits for room instead, in at most half of the
        queue. ``priority``: URGENT, NORMAL or OPTIONAL (see the module's docstring).
        """
        if self._queue is None or self._background_room is None or not self.running:
            raise RuntimeError("Scheduler.submit() called before start().")
        loop = asyncio.get_running_loop()
        req: _Request[R] = _Request(audio, tuple(hotwords), loop.create_future(), priority, background=block)
        entry = (priority, next(self._arrivals), req)
        if block:
            await self._background_room.acquire()
            try:
                await self._queue.put(entry)
            except BaseException:
                self._background_room.release()
                raise
        else:
            try:
                self._queue.put_nowait(entry)
            except asyncio.QueueFull:
                raise QueueFullError(
                    f"The server is busy ({self.options.max_queue} requests waiting). "
                    "Please retry in a moment.",
                    retry_after_s=self.options.retry_after_s,
                ) from None
        return await req.future

    async def submit_unless_busy(self, audio: np.ndarray, hotwords: Sequence[str] = (), *, max_waiting: int) -> R:
        """Queue one clip only while fewer than ``max_waiting`` requests wait, else raise
        QueueFullError at once: for work that is worth doing only when it is cheap to do now
        (live partial text, which the next partial or the final replaces). Queued at OPTIONAL
        priority: everything else is served first, and under load such clips are shed first,
        before the queue is full."""
        if self.queue_depth >= max_waiting:
            raise QueueFullError(
                f"{self.queue_depth} requests are waiting; optional work is skipped.",
                retry_after_s=self.options.retry_after_s,
            )
        return await self.submit(audio, hotwords, priority=OPTIONAL)

    def _taken(self, entry: _Entry) -> _Request[R]:
        """A request off the queue: its background place is free again."""
        req = entry[2]
        if req.background and self._background_room is not None:
            self._background_room.release()
        return req

    async def _collect(self) -> list[_Request[R]]:
        assert self._queue is not None
        batch = [self._taken(await self._queue.get())]
        deadline = time.perf_counter() + self.options.max_wait_ms / 1000.0
        while len(batch) < self.options.max_batch_size:
            # Whatever is already waiting joins without delay; then wait out the window.
            try:
                batch.append(self._taken(self._queue.get_nowait()))
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(self._taken(await asyncio.wait_for(self._queue.get(), remaining)))
            except TimeoutError:
                break
        # Callers that went away (client disconnected) are not worth GPU time.
        return [r for r in batch if not r.future.done()]

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self.busy = True
            self.batches_started += 1
            try:
                await self._run_batch(loop, batch)
            finally:
                self.busy = False
                self.batches_finished += 1

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Request[R]], *, again: bool = False
    ) -> None:
        """Run one engine call and settle its callers. `again`: these items already ran in a call
        the engine died in (EngineRestartedError), so a second death is theirs to see."""
        started = time.perf_counter()
        audio_s = sum(len(r.audio) for r in batch) / self._sample_rate
        if not again:
            for r in batch:
                self.stages.add(f"wait_{_PRIORITY_NAMES[r.priority]}", started - r.enqueued_at)
        try:
            results = await loop.run_in_executor(
                self._executor, self._transcribe, [r.audio for r in batch], [list(r.hotwords) for r in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} inputs")
        except Exception as exc:  # noqa: BLE001 - every failure is handed to the waiting callers
            self._observe(len(batch), audio_s, started, ok=False)
            died = isinstance(exc, EngineRestartedError)
            if len(batch) == 1 and (again or not died):
                _settle(batch[0].future, exc=exc)
                return
            # One bad item (e.g. hotwords the engine refuses) must not fail its companions, and an
            # engine that died and was restarted must not fail what it was running: retry each
            # alone so every caller gets its own result or its own error.
            log.warning("batch of %d failed (%s); retrying items one by one", len(batch), exc)
            for req in batch:
                if not req.future.done():  # withdrawn meanwhile: not worth GPU time either
                    await self._run_batch(loop, [req], again=again or died)
            return
        self._observe(len(batch), audio_s, started, ok=True)
        elapsed = time.perf_counter() - started
        self.stages.add("engine", elapsed)
        if any(r.priority == URGENT for r in batch):
            self.stages.add("engine_with_urgent", elapsed)
        for req, result in zip(batch, results, strict=True):
            _settle(req.future, result=result)

    def _observe(self, size: int, audio_s: float, started: float, *, ok: bool) -> None:
        self.batches_run += 1
        self.items_run += size
        if self._on_batch is not None:
            try:
                self._on_batch(BatchStats(size, audio_s, time.perf_counter() - started, ok))
            except Exception:  # noqa: BLE001 - an observer must never break serving
                log.exception("on_batch observer failed")


def _settle(future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)

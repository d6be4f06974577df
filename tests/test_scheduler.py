"""Scheduler mechanics: batching, back-pressure, error isolation.

These tests use a small recording ``transcribe`` callable on purpose: they check how requests
are grouped and routed, which does not depend on the model. The service tests run the real
engine through the same scheduler.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from asr.errors import HotwordError, QueueFullError
from asr.service.scheduler import BatchStats, Scheduler, SchedulerOptions


class RecordingTranscribe:
    """Returns (clip id, hotwords) per item and records every call's size and thread."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.gate = gate

    def __call__(
        self, audios: Sequence[np.ndarray], hotwords: Sequence[Sequence[str]]
    ) -> list[tuple[int, tuple[str, ...]]]:
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append(len(audios))
        self.threads.add(threading.current_thread().name)
        for hw in hotwords:
            if "BAD" in hw:
                raise HotwordError("hotword BAD is refused")
        time.sleep(self.delay_s)
        return [(int(a[0]), tuple(hw)) for a, hw in zip(audios, hotwords, strict=True)]


def clip(i: int) -> np.ndarray:
    return np.full(1600, i, dtype=np.float32)


async def _with_scheduler(fn, opts: SchedulerOptions, on_batch=None):
    sched = Scheduler(fn, opts, on_batch=on_batch)
    await sched.start()
    return sched


def test_concurrent_requests_are_batched_and_results_routed_back() -> None:
    fake = RecordingTranscribe(delay_s=0.02)
    stats: list[BatchStats] = []

    async def main() -> None:
        sched = await _with_scheduler(fake, SchedulerOptions(max_batch_size=8, max_wait_ms=20), stats.append)
        try:
            results = await asyncio.gather(*(sched.submit(clip(i), [f"w{i}"]) for i in range(20)))
        finally:
            await sched.stop()
        assert results == [(i, (f"w{i}",)) for i in range(20)]

    asyncio.run(main())
    assert sum(fake.calls) == 20
    assert max(fake.calls) == 8  # batches fill up to the limit ...
    assert len(fake.calls) <= 4  # ... so 20 requests need few engine calls
    assert all(name.startswith("asr-engine") for name in fake.threads)
    assert [s.size for s in stats] == fake.calls
    assert all(s.ok for s in stats)


def test_single_request_waits_only_the_short_window() -> None:
    fake = RecordingTranscribe()

    async def main() -> float:
        sched = await _with_scheduler(fake, SchedulerOptions(max_batch_size=32, max_wait_ms=10))
        try:
            t0 = time.perf_counter()
            await sched.submit(clip(1))
            return time.perf_counter() - t0
        finally:
            await sched.stop()

    elapsed = asyncio.run(main())
    assert fake.calls == [1]
    assert elapsed < 0.5


def test_full_queue_raises_queue_full_error() -> None:
    gate = threading.Event()
    fake = RecordingTranscribe(gate=gate)

    async def main() -> None:
        sched = await _with_scheduler(fake, SchedulerOptions(max_batch_size=1, max_wait_ms=0, max_queue=2))
        try:
            first = asyncio.create_task(sched.submit(clip(0)))
            await asyncio.sleep(0.05)  # the consumer took it and is stuck at the gate
            waiting = [asyncio.create_task(sched.submit(clip(i))) for i in (1, 2)]
            await asyncio.sleep(0.01)
            assert sched.queue_depth == 2
            with pytest.raises(QueueFullError) as info:
                await sched.submit(clip(3))
            assert info.value.code == "queue_full"
            # A background caller waits for room instead of failing.
            blocked = asyncio.create_task(sched.submit(clip(4), block=True))
            gate.set()
            assert [r[0] for r in await asyncio.gather(first, *waiting, blocked)] == [0, 1, 2, 4]
        finally:
            gate.set()
            await sched.stop()

    asyncio.run(main())


def test_background_work_leaves_half_the_queue_to_interactive_requests() -> None:
    """A long recording's segments (background, waiting for room) take at most half the queue's
    places; an interactive request behind them is queued, not refused as busy."""
    gate = threading.Event()
    fake = RecordingTranscribe(gate=gate)

    async def main() -> None:
        sched = await _with_scheduler(fake, SchedulerOptions(max_batch_size=1, max_wait_ms=0, max_queue=4))
        try:
            first = asyncio.create_task(sched.submit(clip(0)))
            await asyncio.sleep(0.05)  # the consumer took it and is stuck at the gate
            background = [asyncio.create_task(sched.submit(clip(i), block=True)) for i in range(1, 6)]
            await asyncio.sleep(0.01)
            assert sched.queue_depth == 2  # three background requests wait outside the queue
            interactive = [asyncio.create_task(sched.submit(clip(i))) for i in (6, 7)]
            await asyncio.sleep(0.01)
            assert sched.queue_depth == 4
            with pytest.raises(QueueFullError):  # the queue itself is still bounded
                await sched.submit(clip(8))
            gate.set()
            results = await asyncio.gather(first, *background, *interactive)
            assert [r[0] for r in results] == [0, 1, 2, 3, 4, 5, 6, 7]
            assert sched.queue_depth == 0
            # Every background place came back: the next two go straight into the queue.
            gate.clear()
            stuck = asyncio.create_task(sched.submit(clip(9)))
            await asyncio.sleep(0.05)
            more = [asyncio.create_task(sched.submit(clip(i), block=True)) for i in (10, 11)]
            await asyncio.sleep(0.01)
            assert sched.queue_depth == 2
            gate.set()
            assert [r[0] for r in await asyncio.gather(stuck, *more)] == [9, 10, 11]
        finally:
            gate.set()
            await sched.stop()

    asyncio.run(main())


def test_one_failing_item_does_not_fail_its_batch() -> None:
    fake = RecordingTranscribe()

    async def main() -> list[object]:
        sched = await _with_scheduler(fake, SchedulerOptions(max_batch_size=8, max_wait_ms=20))
        try:
            return await asyncio.gather(
                *(sched.submit(clip(i), ["BAD"] if i == 2 else []) for i in range(5)), return_exceptions=True
            )
        finally:
            await sched.stop()

    results = asyncio.run(main())
    assert isinstance(results[2], HotwordError)
    assert [r[0] for i, r in enumerate(results) if i != 2] == [0, 1, 3, 4]  # type: ignore[index]


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        SchedulerOptions(max_batch_size=0)
    with pytest.raises(ValueError, match="max_queue"):
        SchedulerOptions(max_queue=0)


def test_optional_work_is_shed_while_the_queue_is_busy() -> None:
    """submit_unless_busy (live partial text) is refused at once while `max_waiting` clips wait;
    other requests keep their place and are served."""
    gate = threading.Event()
    fake = RecordingTranscribe(gate=gate)

    async def main() -> None:
        sched = await _with_scheduler(fake, SchedulerOptions(max_batch_size=1, max_wait_ms=0, max_queue=8))
        try:
            first = asyncio.create_task(sched.submit(clip(0)))
            await asyncio.sleep(0.05)  # running, stuck at the gate
            waiting = [asyncio.create_task(sched.submit(clip(i))) for i in (1, 2)]
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFullError):
                await sched.submit_unless_busy(clip(9), max_waiting=2)
            optional = asyncio.create_task(sched.submit_unless_busy(clip(3), max_waiting=3))
            gate.set()
            assert [r[0] for r in await asyncio.gather(first, *waiting, optional)] == [0, 1, 2, 3]
            assert 9 not in [r[0] for r in [await sched.submit(clip(4))]]
        finally:
            gate.set()
            await sched.stop()

    asyncio.run(main())
    assert sum(fake.calls) == 5  # the shed clip never reached the engine


def test_priorities_order_the_queue_and_equal_ones_keep_their_arrival() -> None:
    """A live caption's final (URGENT) is served before waiting files (NORMAL), which are served
    before partial text (OPTIONAL); within a priority, first come first served."""
    from asr.service.scheduler import OPTIONAL, URGENT

    gate = threading.Event()
    order: list[int] = []

    def transcribe(audios: Sequence[np.ndarray], hotwords: Sequence[Sequence[str]]) -> list[int]:
        gate.wait(5)
        order.extend(int(a[0]) for a in audios)
        return [int(a[0]) for a in audios]

    async def main() -> None:
        sched = await _with_scheduler(transcribe, SchedulerOptions(max_batch_size=2, max_wait_ms=0, max_queue=16))
        try:
            first = asyncio.create_task(sched.submit(clip(0)))
            await asyncio.sleep(0.05)  # running, stuck at the gate
            queued = [
                asyncio.create_task(sched.submit_unless_busy(clip(1), max_waiting=8)),
                asyncio.create_task(sched.submit(clip(2))),
                asyncio.create_task(sched.submit(clip(3), priority=URGENT)),
                asyncio.create_task(sched.submit(clip(4), block=True)),
                asyncio.create_task(sched.submit(clip(5), priority=OPTIONAL)),
                asyncio.create_task(sched.submit(clip(6), priority=URGENT)),
            ]
            await asyncio.sleep(0.01)
            gate.set()
            assert await asyncio.gather(first, *queued) == [0, 1, 2, 3, 4, 5, 6]  # each its own result
        finally:
            gate.set()
            await sched.stop()
        return sched.stages.summary()

    stages = asyncio.run(main())
    assert order == [0, 3, 6, 2, 4, 1, 5]
    # /api/info's figures: each request's wait by priority, each engine call's time.
    assert {k: v["n"] for k, v in stages.items()} == {
        "wait_normal": 3, "wait_urgent": 2, "wait_optional": 2, "engine": 4, "engine_with_urgent": 1}
    assert stages["wait_urgent"]["p50_ms"] >= 8  # they waited out the first call at the gate
    assert stages["wait_optional"]["p50_ms"] >= stages["wait_urgent"]["max_ms"]  # served last
    assert stages["engine"]["max_ms"] >= 40 > stages["engine"]["p50_ms"]


def test_an_engine_that_died_and_restarted_runs_the_call_again_once() -> None:
    """A restarted engine process (EngineRestartedError) does not fail what it was running: each
    item runs again, alone and once; an item whose second run dies too gets the error."""
    from asr.errors import EngineRestartedError

    deaths = {"left": 1}
    calls: list[list[int]] = []

    def dies(audios: Sequence[np.ndarray], hotwords: Sequence[Sequence[str]]) -> list[int]:
        ids = [int(a[0]) for a in audios]
        calls.append(ids)
        if 99 in ids or deaths["left"] > 0:  # clip 99 kills the engine every time
            deaths["left"] -= 1
            raise EngineRestartedError("The engine process stopped while recognising.")
        return ids

    async def main() -> None:
        sched = await _with_scheduler(dies, SchedulerOptions(max_batch_size=8, max_wait_ms=5))
        try:
            assert await sched.submit(clip(1), []) == 1  # a batch of one: run again, then served
            deaths["left"] = 1
            got = await asyncio.gather(*(sched.submit(clip(i), []) for i in (2, 3, 99)), return_exceptions=True)
        finally:
            await sched.stop()
        assert got[:2] == [2, 3]
        assert isinstance(got[2], EngineRestartedError)

    asyncio.run(main())
    assert calls[:2] == [[1], [1]]
    # the batch of three died; each ran again alone; clip 99 died alone too and was not run a third time
    assert sorted(map(tuple, calls[2:])) == [(2,), (2, 3, 99), (3,), (99,)]

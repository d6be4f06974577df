"""The link between an HTTP worker and the batching process (asr/service/front.py), in one event
loop over a real unix socket and real shared memory, with the tiny engine: results equal the
engine's own, errors cross typed, a withdrawn request's block is not reused while an engine call
may still read it, and a batching process that goes away fails what waits with the typed engine
failure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asr.errors import ASRError, AudioError, EngineFailedError, QueueFullError
from asr.service.front import BatchHub, FrontConfig, HubLink, RemoteScheduler
from asr.service.scheduler import SchedulerOptions


class Gated:
    """The tiny engine, held at a gate (a batch that is still running when the test acts)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def transcribe(self, audios: Sequence[np.ndarray], hotwords: Any = None) -> list[Any]:
        self.entered.set()
        self.gate.wait(30)
        return self.engine.transcribe(audios, hotwords)

    def info(self) -> dict[str, Any]:
        return self.engine.info()


def _clip(seed: int, seconds: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).astype(np.float32)


async def _pair(engine: Any, tmp_path: Path, **options: Any) -> tuple[BatchHub, HubLink, RemoteScheduler]:
    hub = BatchHub(SchedulerOptions(**{"max_batch_size": 8, "max_wait_ms": 20, **options}), engine)
    path = tmp_path / "hub.sock"
    await hub.start(path)
    link = HubLink(FrontConfig(0, str(path), str(tmp_path)))
    scheduler = RemoteScheduler(link)
    await scheduler.start()
    return hub, link, scheduler


def test_results_and_typed_errors_cross(engine: Any, tmp_path: Path) -> None:
    clips = [_clip(i, 0.6 + 0.3 * i) for i in range(4)]
    want = engine.transcribe(clips, [["北京"]] * 4)

    async def main() -> None:
        hub, link, scheduler = await _pair(engine, tmp_path)
        try:
            got = await asyncio.gather(*(scheduler.submit(c, ["北京"]) for c in clips))
            assert [g.text for g in got] == [w.text for w in want]
            assert [g.timestamps for g in got] == [w.timestamps for w in want]
            assert hub.scheduler.batches_run == 1  # the four met in one batch
            bad = clips[0].copy()
            bad[10] = np.nan
            with pytest.raises(AudioError) as direct:
                engine.transcribe([bad])
            with pytest.raises(AudioError) as err:
                await scheduler.submit(bad)
            assert type(err.value) is type(direct.value)
            assert (err.value.code, str(err.value)) == (direct.value.code, str(direct.value))
            assert scheduler.batches_run == hub.scheduler.batches_run  # counters come back with replies
            # Live partial text's path: optional work, refused at once when the queue is long.
            alone = engine.transcribe([clips[0]])[0]
            assert (await scheduler.submit_unless_busy(clips[0], (), max_waiting=1)).text == alone.text
            with pytest.raises(QueueFullError):
                await scheduler.submit_unless_busy(clips[0], (), max_waiting=0)
        finally:
            await scheduler.stop()
            await hub.stop()

    asyncio.run(main())


def test_a_full_queue_is_refused_with_its_retry_hint(engine: Any, tmp_path: Path) -> None:
    gated = Gated(engine)

    async def main() -> None:
        hub, link, scheduler = await _pair(gated, tmp_path, max_batch_size=1, max_queue=1)
        try:
            gated.gate.clear()
            running = asyncio.ensure_future(scheduler.submit(_clip(0)))
            await asyncio.to_thread(gated.entered.wait, 10)
            queued = asyncio.ensure_future(scheduler.submit(_clip(1)))
            await asyncio.sleep(0.2)
            with pytest.raises(QueueFullError) as err:
                await scheduler.submit(_clip(2))
            assert err.value.code == "queue_full" and err.value.retry_after_s == 1.0
            gated.gate.set()
            assert (await running).text is not None and (await queued).text is not None
        finally:
            gated.gate.set()
            await scheduler.stop()
            await hub.stop()

    asyncio.run(main())


def test_a_withdrawn_requests_block_stays_lent_until_its_batch_ends(engine: Any, tmp_path: Path) -> None:
    gated = Gated(engine)

    async def main() -> None:
        hub, link, scheduler = await _pair(gated, tmp_path)
        try:
            gated.gate.clear()
            waiter = asyncio.ensure_future(scheduler.submit(_clip(0)))
            await asyncio.to_thread(gated.entered.wait, 10)  # its batch runs, reading the block
            waiter.cancel()
            await asyncio.sleep(0.3)
            assert link._pending and not any(link._arena._free.values())  # still lent
            gated.gate.set()
            for _ in range(200):
                if not link._pending:
                    break
                await asyncio.sleep(0.02)
            assert not link._pending and sum(len(v) for v in link._arena._free.values()) == 1
            # The next request reuses the block.
            assert (await scheduler.submit(_clip(1))).text is not None
            assert link._arena.blocks == 1
        finally:
            gated.gate.set()
            await scheduler.stop()
            await hub.stop()

    asyncio.run(main())


def test_the_batching_process_going_away_fails_waiters_typed(engine: Any, tmp_path: Path) -> None:
    gated = Gated(engine)

    async def main() -> None:
        hub, link, scheduler = await _pair(gated, tmp_path)
        lost = asyncio.Event()
        link.on_lost = lost.set
        try:
            gated.gate.clear()
            waiter = asyncio.ensure_future(scheduler.submit(_clip(0)))
            await asyncio.to_thread(gated.entered.wait, 10)
            await hub.stop()  # closes the worker's connection, as the process's exit would
            with pytest.raises(EngineFailedError) as err:
                await asyncio.wait_for(waiter, 10)
            assert isinstance(err.value, ASRError) and err.value.code == "engine_error"
            await asyncio.wait_for(lost.wait(), 5)
            assert not scheduler.running
            with pytest.raises(EngineFailedError):
                await scheduler.submit(_clip(1))
        finally:
            gated.gate.set()
            await scheduler.stop()

    asyncio.run(main())

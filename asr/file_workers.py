"""`transcribe` over many files with the pipeline in several processes (`pipeline.file_workers`).

Why: in one process, every file's Python runs on one event loop under one GIL: the decoding
processes' hand-offs, the VAD stream, punctuation, ITN, assembly, rendering and writing. A folder
of 300 mp3 clips went through the command line at 1,435x real time on an H200 while the engine,
in its own process, does ~13,000x on the same clips, and the service, the same pipeline in four
HTTP worker processes, ~10,000 audio-s/s (BENCHMARKS.md).

The split is the service's (asr/service/front.py): this process holds the batching hub, the one
scheduler in front of the engine, so every worker's segments share engine batches (and an item's
result is the engine's for that item whatever it is batched with); N spawned workers each run the
unchanged pipeline on files they take from one queue, with their own decoding processes, and
write their outputs themselves. Here, only counting: a worker says which file it took and how
each ended (the error's text, the notices).

Workers start before the engine loads (importing torch, loading the punctuation and VAD models
and ITN's grammars meanwhile) and connect once the hub's socket is there. A worker that dies
(killed, out of memory) fails the files it had taken, each with a message; the files still queued
go to the workers left, and fail the same way when none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr.errors import ASRError
from asr.service.front import FrontConfig, runtime_dir, worker_settings
from asr.settings import Settings

log = logging.getLogger(__name__)

_AUTO_MIN_FILES = 16
_AUTO_MIN_BYTES = 32 * 1048576
_CONNECT_S = 600.0  # how long a worker waits for the hub (the engine loading: minutes at most)
_POLL_S = 0.25


def file_worker_count(settings: Settings, files: Sequence[Path]) -> int:
    """Worker processes for a command over `files` (`pipeline.file_workers`); 1: none, the
    pipeline runs in the command's own process."""
    from asr.engine.process import wants_process
    from asr.runtime import usable_cores

    n = settings.pipeline.file_workers
    if n >= 0:
        return max(1, n)
    if len(files) < 2 or not wants_process(settings.engine):
        return 1
    if len(files) < _AUTO_MIN_FILES and sum(_size(f) for f in files) < _AUTO_MIN_BYTES:
        return 1
    return max(2, min(4, usable_cores() // 4))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class Outcome:
    """How one file ended: `error` is None when its outputs are written."""

    path: str
    error: str | None = None
    notices: list[tuple[str, str]] = field(default_factory=list)


class FileWorkers:
    """N pipeline processes in front of one batching hub. `start()` early (before the engine
    loads), then `async with serving(engine)`: `transcribe(...)` as often as needed; `close()`.

    Files are handed out here, a worker at a time as it has room (it asks for `files_in_flight`
    at its start and one more as each ends), so this process always knows which files a worker
    holds: a worker that dies fails exactly those."""

    def __init__(self, settings: Settings, n: int) -> None:
        self.settings = settings
        self.n = n
        self._runtime = runtime_dir()
        self._socket = str(self._runtime / "hub.sock")
        self._ctx = multiprocessing.get_context("spawn")
        self._inboxes: list[Any] = [self._ctx.Queue() for _ in range(n)]
        self._events: Any = self._ctx.Queue()
        self._procs: list[Any] = []
        self._room = [0] * n  # files each worker asked for and has not been given
        self._lost: dict[int, str] = {}  # worker index -> why it is gone
        self._ids = 0
        self.held: dict[int, int] = {}
        """File (its number in the order of all calls of `transcribe`) -> the worker holding it now."""

    def start(self, options: Any) -> None:
        """Spawn the workers: they import, load their models, then wait for the hub."""
        data = worker_settings(self.settings, self.n).model_dump(mode="json")
        level = logging.getLogger().level
        for index in range(self.n):
            config = FrontConfig(index, self._socket, str(self._runtime))
            proc = self._ctx.Process(target=_worker_main, name=f"asr-files-{index}", args=(
                index, data, config, options, self._inboxes[index], self._events, level))
            proc.start()
            self._procs.append(proc)

    @contextlib.asynccontextmanager
    async def serving(self, engine: Any) -> Any:
        """The batching hub in front of `engine`, on this event loop, while the block runs."""
        from asr.pipeline.models import served_punctuation, served_vad
        from asr.pipeline.pipeline import scheduler_options
        from asr.service.front import BatchHub

        punctuation = await asyncio.to_thread(served_punctuation, self.settings, engine)
        vad = await asyncio.to_thread(served_vad, self.settings, engine)
        hub = BatchHub(scheduler_options(self.settings, getattr(engine, "engines", 1)), engine,
                       punctuation=punctuation, vad=vad)
        await hub.start(self._socket)
        try:
            yield hub
        finally:
            await self._stop_workers()
            await hub.stop()

    async def transcribe(self, jobs: Sequence[tuple[Path, Path]], formats: Sequence[str],
                         on_done: Any = None) -> list[Outcome]:
        """Each (recording, output target without suffix) through a worker; the outcomes in the
        order given. `on_done(outcome)` is called as each file ends."""
        first = self._ids
        self._ids += len(jobs)
        waiting = list(range(len(jobs)))[::-1]  # popped from the end: in the order given
        outcomes: dict[int, Outcome] = {}

        def end(k: int, error: str | None, notices: list[tuple[str, str]] | None = None) -> None:
            self.held.pop(first + k, None)
            if k not in outcomes:
                outcomes[k] = Outcome(str(jobs[k][0]), error, notices or [])
                if on_done is not None:
                    on_done(outcomes[k])

        while len(outcomes) < len(jobs):
            while waiting and (index := self._least_held()) is not None:
                k = waiting.pop()
                self.held[first + k] = index
                self._room[index] -= 1
                path, target = jobs[k]
                self._inboxes[index].put((first + k, str(path), str(target), list(formats)))
            try:
                kind, index, *rest = await asyncio.to_thread(self._events.get, True, _POLL_S)
            except queue.Empty:
                pass
            else:
                if kind == "room":
                    self._room[index] += rest[0]
                elif kind == "done":
                    self._room[index] += 1
                    if first <= rest[0] < first + len(jobs):
                        end(rest[0] - first, rest[1], rest[2])
                elif kind == "lost":
                    self._lost.setdefault(index, rest[0])
            self._note_deaths()
            for job, index in list(self.held.items()):
                if index in self._lost and first <= job < first + len(jobs):
                    end(job - first, f"its worker process stopped ({self._lost[index]})")
            if len(self._lost) == self.n:
                why = "; ".join(sorted(set(self._lost.values())))
                for k in waiting:
                    end(k, f"no worker process is left ({why})")
                waiting.clear()
        return [outcomes[k] for k in range(len(jobs))]

    def _least_held(self) -> int | None:
        """The worker with room that holds the fewest files (ten long recordings over four
        workers: 3, 3, 2, 2, not ten in the first to ask), or None."""
        free = [i for i in range(self.n) if self._room[i] > 0 and i not in self._lost]
        if not free:
            return None
        holding = [0] * self.n
        for index in self.held.values():
            holding[index] += 1
        return min(free, key=lambda i: holding[i])

    def _note_deaths(self) -> None:
        for index, proc in enumerate(self._procs):
            if not proc.is_alive() and index not in self._lost:
                self._lost[index] = f"exit code {proc.exitcode}"

    async def _stop_workers(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        deadline = time.monotonic() + 30.0
        while any(p.is_alive() for p in self._procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def close(self) -> None:
        """Stop workers still running (an engine that failed to load: no hub ever came) and
        remove the runtime folder."""
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for q in (*self._inboxes, self._events):
            q.close()
            q.cancel_join_thread()
        # Dropped now, not at the interpreter's exit: the command leaves through os._exit, and
        # the queues' semaphores are unregistered from multiprocessing's tracker as they go.
        self._procs, self._inboxes, self._events = [], [], None
        shutil.rmtree(self._runtime, ignore_errors=True)


# ---- in a worker process -----------------------------------------------------------------------


def _worker_main(index: int, settings_data: dict[str, Any], config: FrontConfig, options: Any, inbox: Any,
                 events: Any, log_level: int) -> None:
    from asr.runtime import configure_process

    logging.basicConfig(level=log_level or logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.model_validate(settings_data)
    configure_process(settings)
    os.umask(0o077)
    try:
        asyncio.run(_work(index, settings, config, options, inbox, events))
    except BaseException as exc:
        events.put(("lost", index, f"{type(exc).__name__}: {exc}"))
        raise


async def _work(index: int, settings: Settings, config: FrontConfig, options: Any, inbox: Any,
                events: Any) -> None:
    from asr.cli import _preload_models, write_outputs
    from asr.pipeline.pipeline import Pipeline
    from asr.service.front import HubLink, RemoteEngine, RemoteScheduler

    link = HubLink(config)
    models = _preload_models(settings, options, link=link)
    await _connect(link)
    pipeline = Pipeline(settings, RemoteEngine(link), models=models, scheduler=RemoteScheduler(link))
    await pipeline.start()
    running: set[asyncio.Task[None]] = set()

    async def one(job: int, path: str, target: str, formats: list[str]) -> None:
        error = None
        notices: list[tuple[str, str]] = []
        try:
            result = await pipeline.transcribe(Path(path), options, background=True)
            await asyncio.to_thread(write_outputs, result, Path(target), formats)
            notices = [(n.code, n.message) for n in result.notices]
        except ASRError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one file's failure; the others go on
            log.exception("transcribing %s failed", path)
            error = f"internal error: {type(exc).__name__}: {exc}"
        events.put(("done", index, job, error, notices))

    events.put(("room", index, settings.pipeline.files_in_flight))
    try:
        while (job := await asyncio.to_thread(inbox.get)) is not None:
            task = asyncio.create_task(one(*job))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)
    finally:
        await pipeline.stop()


async def _connect(link: Any) -> None:
    """Connect once the hub listens (the command loads the engine first); give up when the
    command is gone."""
    deadline = time.monotonic() + _CONNECT_S
    parent = os.getppid()
    while True:
        try:
            await link.connect()
            return
        except (FileNotFoundError, ConnectionRefusedError):
            if os.getppid() != parent or time.monotonic() > deadline:
                print("the command that started this worker is gone", file=sys.stderr)
                raise SystemExit(1) from None
            await asyncio.sleep(0.05)

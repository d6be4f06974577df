"""One batching point behind several HTTP worker processes (`server.http_workers` > 1).

Why: under load the server's one event loop was the limit, not the GPU (issue #11: ~4.7 ms of
Python per request in the parent for HTTP and multipart parsing, decoding, the pipeline and
rendering; the loop 70% busy at ~3,900 audio-s/s while the engine alone does ~16,000x real time).
That Python is per request and independent between requests, so it can run in several processes;
the batching cannot: requests only share engine batches if they meet in one queue.

So the split is at the scheduler, not at the engine:

* The **batching process** (`BatchHub`) owns the one `Scheduler` and the engine (which on a GPU
  is itself `EngineProcess`'s child, as in one-process mode). Per request it does only: read a
  small message, wrap the samples (already in shared memory) in an array, queue it, pickle the
  `Transcript` back. Batch metrics live here, and request metrics are sent here, so /metrics
  and /api/info describe the whole service whichever worker answers.
* Each **HTTP worker** runs the unchanged app (routes, pipeline: decode, VAD, punctuation, ITN,
  rendering) with a `RemoteScheduler` in place of its own scheduler: the pipeline submits each
  segment exactly as before, and the segment goes to the batching process instead. With
  `longform.punc_in_engine` the punctuation network runs there too (`RemotePuncNetwork`): the
  worker sends its windows of word ids and gets their mark classes back; with
  `longform.vad_in_engine` Silero's network on recordings (`RemoteSilero`): the worker sends a
  block's samples (through its arena, as segments go) and gets each frame's probability back.

The link is a unix socket carrying length-prefixed pickles (small: ids, hotwords, options,
results, typed errors). Pickles are only for peers this user started: the socket and the blocks
live in the supervisor's private runtime folder (mode 0700, asr/web/workers.py).

Samples go through shared memory: each worker writes a segment into a block of its own
`AudioArena` (files in /dev/shm, mapped by both sides, the file unlinked once
the hub has mapped it) and sends the block's id; the hub hands the scheduler a view of the block,
so no sample is copied in the batching process (the engine process copies it into its own area,
as before). A block is the worker's again only after the hub's final reply for that request:
for a withdrawn request (client gone, timeout) that reply waits until the engine call that may
be reading it has ended (`Scheduler.batches_started/finished`).

Failure semantics:

* The batching process's errors cross typed (`ASRError.__reduce__` keeps code and fields), so
  statuses and error codes are the one-process service's.
* The batching process going away (it is the supervisor: killed, crashed) fails every waiting
  request with `EngineFailedError` and stops the worker (it cannot serve without it).
* A worker going away only drops its own requests; the hub cancels them (skipped if still
  queued) and its mapped blocks are released with the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mmap
import os
import pickle
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asr.errors import EngineFailedError, QueueFullError
from asr.service.metrics import Metrics
from asr.service.scheduler import NORMAL, BatchStats, Scheduler, SchedulerOptions

if TYPE_CHECKING:
    from asr.settings import Settings

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
_MIN_BLOCK = 1 << 20  # bytes: 16 s of float32 audio; larger segments get the next power of two
_CANCEL_POLL_S = 0.01


def _frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


async def _read(reader: asyncio.StreamReader) -> Any:
    header = await reader.readexactly(_HEADER.size)
    return pickle.loads(await reader.readexactly(_HEADER.unpack(header)[0]))


# ============================================================================ the batching process
class _Peer:
    """One worker's connection, as the hub sees it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.index = -1
        self.pid = 0
        self.blocks: dict[int, mmap.mmap] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def send(self, message: Any) -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame(message))


class BatchHub:
    """The scheduler and the engine, serving HTTP workers over a unix socket.

    Use from one event loop: ``await start(path)``, ``await stop()``.
    """

    def __init__(
        self, scheduler_options: SchedulerOptions, engine: Any, *, sample_rate: int = 16000,
        punctuation: tuple[Any, str | None] = (None, None), vad: tuple[Any, str | None] = (None, None),
    ) -> None:
        self.engine = engine
        self.punctuation, self.punctuation_error = punctuation
        """The punctuation network served to the workers (`models.served_punctuation`), or None
        (and why not, when it failed to load)."""
        self.vad, self.vad_error = vad
        """Silero's network on recordings served to the workers (`models.served_vad`)."""
        self.punctuation_calls = 0
        self.vad_calls = 0
        self.metrics = Metrics(queue_depth=lambda: self.scheduler.queue_depth)
        self._batch_owner: dict[int, int] = {}  # id(audio array) -> worker index, while queued
        self.scheduler: Scheduler[Any] = Scheduler(
            self._transcribe, scheduler_options, sample_rate=sample_rate, on_batch=self._on_batch
        )
        self._peers: set[_Peer] = set()
        self._server: asyncio.AbstractServer | None = None
        self.requests = 0
        """Segments submitted by workers."""
        self.by_worker: dict[int, dict[str, int]] = {}
        """Per worker index: segments submitted, batch-job notices sent (tests, diagnostics)."""
        self.workers_by_batch: list[int] = []
        """How many distinct workers had items in each of the last batches (tests, diagnostics)."""
        self.mixed_batches = 0
        """Batches that held items from more than one worker: the workers' requests meet."""

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.observe_batch(stats)

    def _transcribe(self, audios: Sequence[np.ndarray], hotwords: Any) -> Any:
        # The engine call, on the scheduler's worker thread: counts which workers met in it.
        owners = {self._batch_owner.get(id(a), -1) for a in audios}
        if len(owners) > 1:
            self.mixed_batches += 1
        self.workers_by_batch = [*self.workers_by_batch[-99:], len(owners)]
        return self.engine.transcribe(audios, hotwords)

    async def start(self, path: str | os.PathLike[str], *, warmup: bool = False) -> None:
        await self.scheduler.start()
        if warmup:
            noise = np.random.default_rng(0).normal(0, 0.01, 16000).astype(np.float32)
            t0 = time.perf_counter()
            await self.scheduler.submit(noise, ())
            log.info("warm-up transcription took %.2f s", time.perf_counter() - t0)
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in list(self._peers):
            for task in peer.tasks.values():
                task.cancel()
            peer.writer.close()
        await self.scheduler.stop()

    @property
    def workers(self) -> list[dict[str, int]]:
        return sorted(({"index": p.index, "pid": p.pid} for p in self._peers if p.index >= 0),
                      key=lambda w: w["index"])  # fmt: skip

    def state(self, *, with_metrics: bool = False) -> dict[str, Any]:
        """What a worker shows in /api/info, /healthz and /metrics."""
        s = self.scheduler
        out: dict[str, Any] = {
            "running": s.running, "queue_depth": s.queue_depth, "busy": s.busy,
            "batches_run": s.batches_run, "items_run": s.items_run,
            "engine": self.engine.info(), "throughput": self.metrics.throughput(),
            "workers": self.workers, "requests": self.requests, "mixed_batches": self.mixed_batches,
            "by_worker": {str(k): dict(v) for k, v in sorted(self.by_worker.items())},
            "stages": s.stages.summary(),
            "punctuation": {"served": self.punctuation is not None, "error": self.punctuation_error,
                            "calls": self.punctuation_calls},
            "vad": {"served": self.vad is not None, "error": self.vad_error, "calls": self.vad_calls},
        }  # fmt: skip
        if with_metrics:
            out["metrics"] = self.metrics.render()
        return out

    def _counters(self) -> tuple[int, bool, int, int]:
        s = self.scheduler
        return (s.queue_depth, s.busy, s.batches_run, s.items_run)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _Peer(writer)
        self._peers.add(peer)
        try:
            while True:
                try:
                    message = await _read(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self._handle(peer, message)
        finally:
            self._peers.discard(peer)
            if peer.index >= 0:
                log.info("HTTP worker %d (pid %d) disconnected", peer.index, peer.pid)
            for task in peer.tasks.values():
                task.cancel()  # queued ones are skipped; the blocks die with the last view
            peer.blocks.clear()
            writer.close()

    def _handle(self, peer: _Peer, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "submit":
            _, rid, block_id, path, samples, hotwords, priority, block, max_waiting = message
            audio = self._samples(peer, block_id, path, samples)
            self.requests += 1
            self._count(peer, "segments")
            peer.tasks[rid] = asyncio.create_task(
                self._submit(peer, rid, audio, hotwords, priority, block, max_waiting)
            )
        elif kind == "punc":
            _, rid, ids, batch_words = message
            self.punctuation_calls += 1
            call = None if self.punctuation is None else self.punctuation.classes
            peer.tasks[rid] = asyncio.create_task(self._serve_call(peer, rid, call, "punctuation", ids, batch_words))
        elif kind == "vad":
            _, rid, block_id, path, samples, n_lanes, lane, steps = message
            audio = self._samples(peer, block_id, path, samples)
            self.vad_calls += 1
            call = None if self.vad is None else self.vad.lane_probs
            peer.tasks[rid] = asyncio.create_task(self._serve_call(peer, rid, call, "VAD", audio, n_lanes, lane, steps))
        elif kind == "cancel":
            task = peer.tasks.get(message[1])
            if task is not None:
                task.cancel()
        elif kind == "request":
            _, endpoint, status, seconds = message
            self.metrics.observe_request(endpoint, status, seconds)
        elif kind == "state":
            peer.send(("state", message[1], self.state(with_metrics=message[2])))
        elif kind == "jobs":
            self._count(peer, "jobs")
            # New batch-job files: wake the worker that runs jobs (whichever connection it is).
            for other in self._peers:
                other.send(("jobs",))
        elif kind == "hello":
            _, peer.index, peer.pid = message
            log.info("HTTP worker %d (pid %d) connected", peer.index, peer.pid)
            peer.send(("hello", self.engine.info(), asdict(self.scheduler.options), self.state()))
        else:
            log.error("unknown message from HTTP worker %d: %r", peer.index, kind)

    @staticmethod
    def _samples(peer: _Peer, block_id: int, path: str | None, samples: int) -> np.ndarray:
        """A view of the samples a worker wrote into one of its blocks (mapped at first sight)."""
        if path is not None:
            fd = os.open(path, os.O_RDWR)
            try:
                peer.blocks[block_id] = mmap.mmap(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)  # both sides have it mapped; nothing else needs the name
        return np.frombuffer(peer.blocks[block_id], np.float32, samples)

    def _count(self, peer: _Peer, what: str) -> None:
        counts = self.by_worker.setdefault(peer.index, {"segments": 0, "jobs": 0})
        counts[what] += 1

    async def _submit(
        self, peer: _Peer, rid: int, audio: np.ndarray, hotwords: Sequence[str], priority: int,
        block: bool, max_waiting: int | None,
    ) -> None:  # fmt: skip
        self._batch_owner[id(audio)] = peer.index
        reply: tuple[Any, ...]
        try:
            if max_waiting is not None:
                result = await self.scheduler.submit_unless_busy(audio, hotwords, max_waiting=max_waiting)
            else:
                result = await self.scheduler.submit(audio, hotwords, block=block, priority=priority)
            reply = ("done", rid, result, self._counters())
        except asyncio.CancelledError:
            # Withdrawn. A batch that started before may still be reading the samples: the block
            # goes back to the worker only once that batch has ended (later ones skip the item).
            if self.scheduler.busy:
                target = self.scheduler.batches_started
                while self.scheduler.batches_finished < target and self.scheduler.running:
                    await asyncio.sleep(_CANCEL_POLL_S)
            reply = ("cancelled", rid)
        except Exception as exc:  # noqa: BLE001 - every failure crosses typed
            reply = ("fail", rid, exc, self._counters())
        finally:
            self._batch_owner.pop(id(audio), None)
            peer.tasks.pop(rid, None)
        try:
            peer.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError):
            error = EngineFailedError(f"Recognition failed ({reply[2]!r:.200}).")
            peer.send(("fail", rid, error, self._counters()))

    async def _serve_call(self, peer: _Peer, rid: int, call: Callable[..., Any] | None, what: str, *args: Any) -> None:
        """One call of a served network (punctuation's `classes`, the VAD's `lane_probs`) on a
        thread; the answer, or the failure typed, to the worker."""
        reply: tuple[Any, ...]
        try:
            if call is None:
                raise EngineFailedError(f"The batching process serves no {what} model.")
            reply = ("done", rid, await asyncio.to_thread(call, *args), self._counters())
        except asyncio.CancelledError:
            return  # the worker is gone
        except Exception as exc:  # noqa: BLE001 - every failure crosses typed
            reply = ("fail", rid, exc, self._counters())
        finally:
            peer.tasks.pop(rid, None)
        peer.send(reply)


# ============================================================================ an HTTP worker
class _Block:
    __slots__ = ("id", "size", "area", "path")

    def __init__(self, block_id: int, size: int, area: mmap.mmap, path: str | None) -> None:
        self.id, self.size, self.area, self.path = block_id, size, area, path


class AudioArena:
    """A worker's shared-memory blocks for segments in flight, reused by size class. Thread-safe
    (a VAD block is lent from the thread that cut it)."""

    def __init__(self, folder: str | os.PathLike[str], prefix: str) -> None:
        self._folder = Path(folder)
        self._prefix = prefix
        self._ids = itertools.count()
        self._free: dict[int, list[_Block]] = {}
        self._lock = threading.Lock()
        self.blocks = 0

    def take(self, nbytes: int) -> _Block:
        size = max(_MIN_BLOCK, 1 << max(0, nbytes - 1).bit_length())
        with self._lock:
            free = self._free.get(size)
            if free:
                return free.pop()
            block_id = next(self._ids)
            self.blocks += 1
        path = str(self._folder / f"{self._prefix}-{block_id}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            area = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return _Block(block_id, size, area, path)

    def give_back(self, block: _Block) -> None:
        with self._lock:
            self._free.setdefault(block.size, []).append(block)


def runtime_dir() -> Path:
    """A private (0700) folder for the link's socket and the workers' audio blocks: in /dev/shm,
    which is memory, not disk, where it can be written."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="asr-front-", dir=base))


def worker_settings(settings: Settings, n: int) -> Settings:
    """The settings of one of `n` worker processes (HTTP workers, the command line's file
    workers): the cores are shared by the workers, so automatic thread counts are divided among
    them, and so are the decoding processes (at least one each: a worker that decoded mp3
    uploads in its threads spent most of their time waiting for its GIL, see
    `decode_process_count`)."""
    from asr.runtime import usable_cores

    cores = usable_cores()
    engine, pipeline = settings.engine, settings.pipeline
    if engine.num_threads == 0:
        engine = engine.model_copy(update={"num_threads": max(1, cores // n)})
    if pipeline.decode_processes < 0:
        share = max(1, min(16, cores // 2) // n)
        pipeline = pipeline.model_copy(update={"decode_processes": share})
    return settings.model_copy(update={"engine": engine, "pipeline": pipeline})


@dataclass
class FrontConfig:
    """Where an HTTP worker finds the batching process (what the supervisor hands each worker)."""

    index: int
    """This worker's number, 0..N-1; worker 0 runs the batch jobs."""
    socket_path: str
    arena_dir: str


class HubLink:
    """An HTTP worker's connection to the batching process."""

    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        self.index = config.index
        self._arena = AudioArena(config.arena_dir, f"w{config.index}-{os.getpid()}")
        self._ids = itertools.count()
        self._pending: dict[int, tuple[asyncio.Future[Any], _Block | None]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.connected = False
        self.engine_info: dict[str, Any] = {}
        self.options = SchedulerOptions()
        self.state: dict[str, Any] = {}
        self.counters: tuple[int, bool, int, int] = (0, False, 0, 0)
        self.on_jobs: Callable[[], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect(self) -> None:
        if self.connected:
            return
        self._loop = asyncio.get_running_loop()
        reader, self._writer = await asyncio.open_unix_connection(self.config.socket_path)
        self._writer.write(_frame(("hello", self.index, os.getpid())))
        _, self.engine_info, options, self.state = await _read(reader)
        self.options = SchedulerOptions(**options)
        self._take_state(self.state)
        self.connected = True
        self._reader_task = asyncio.create_task(self._read_replies(reader), name="asr-hub-link")

    async def close(self) -> None:
        self.connected = False
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
        self._fail_pending("The service is stopping.")

    def send(self, message: Any) -> None:
        if self.connected and self._writer is not None:
            self._writer.write(_frame(message))

    def _take_state(self, state: dict[str, Any]) -> None:
        self.engine_info = state.get("engine", self.engine_info)
        self.counters = (state["queue_depth"], state["busy"], state["batches_run"], state["items_run"])

    async def submit(
        self, audio: np.ndarray, hotwords: Sequence[str], *, block: bool, priority: int,
        max_waiting: int | None = None,
    ) -> Any:  # fmt: skip
        if not self.connected:
            raise EngineFailedError("The batching process is not running (the service is stopping or failed).")
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        slot, path = self._lend(audio)
        rid, future = self._ask("submit", slot, slot.id, path, len(audio), tuple(hotwords), priority, block,
                                max_waiting)
        try:
            return await future
        except asyncio.CancelledError:
            # The client went away or timed out: withdraw it. The block stays lent until the hub
            # says no engine call can read it any more ("cancelled").
            if rid in self._pending:
                self.send(("cancel", rid))
            raise

    def use_served_models(self, models: Any, longform: Any) -> None:
        """Point a worker's `StageModels` at the networks the batching process serves, as
        `longform.punc_in_engine` and `vad_in_engine` ask (known once connected)."""
        if longform.punc_in_engine:
            models.use_served_punctuation(self.served_punctuation)
        if longform.vad_in_engine:
            models.use_served_vad(self.served_vad)

    def served_punctuation(self) -> tuple[Any, str | None]:
        """`StageModels.use_served_punctuation`'s source: the batching process's punctuation
        network as a `RemotePuncNetwork`, (None, why) when it failed to load there, (None, None)
        when it serves none (the worker then loads its own)."""
        served = self.state.get("punctuation") or {}
        if served.get("served"):
            return RemotePuncNetwork(self), None
        return None, served.get("error")

    def served_vad(self) -> tuple[Any, str | None]:
        """As `served_punctuation`, for Silero's network on recordings (`RemoteSilero`)."""
        served = self.state.get("vad") or {}
        if served.get("served"):
            return RemoteSilero(self), None
        return None, served.get("error")

    async def vad_lane_probs(
        self, slot: _Block, path: str | None, samples: int, n_lanes: int, lane: int, steps: int
    ) -> np.ndarray:
        """`TorchSilero.lane_probs` in the batching process of the samples `_lend` put in `slot`
        (the block is this worker's again with the answer)."""
        if not self.connected:
            self._arena.give_back(slot)
            raise EngineFailedError("The batching process is not running (the service is stopping or failed).")
        _, future = self._ask("vad", slot, slot.id, path, samples, n_lanes, lane, steps)
        return np.asarray(await future)

    async def punctuate(self, ids: list[list[int]], batch_words: int) -> list[np.ndarray]:
        if not self.connected:
            raise EngineFailedError("The batching process is not running (the service is stopping or failed).")
        _, future = self._ask("punc", None, ids, batch_words)
        return list(await future)

    def _ask(self, kind: str, slot: _Block | None, *fields: Any) -> tuple[int, asyncio.Future[Any]]:
        """Send a request the hub answers by its id: the future takes the answer, and `slot` is
        this worker's again with it."""
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, slot)
        self.send((kind, rid, *fields))
        return rid, future

    def _lend(self, audio: np.ndarray) -> tuple[_Block, str | None]:
        """A block of this worker's arena holding `audio` (lent to the hub until its reply), and
        its path when the hub has not mapped it yet."""
        slot = self._arena.take(audio.nbytes)
        np.frombuffer(slot.area, np.float32, len(audio))[:] = audio
        path, slot.path = slot.path, None  # the hub maps a block once, when it first sees it
        return slot, path

    async def fetch_state(self, *, with_metrics: bool = False) -> dict[str, Any]:
        if not self.connected:
            return self.state
        _, future = self._ask("state", None, with_metrics)
        self.state = await asyncio.wait_for(future, 10)
        self._take_state(self.state)
        return self.state

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await _read(reader)
                kind = message[0]
                if kind == "jobs":
                    if self.on_jobs is not None:
                        self.on_jobs()
                    continue
                future, slot = self._pending.pop(message[1], (None, None))
                if slot is not None:
                    self._arena.give_back(slot)
                if kind in ("done", "fail"):
                    self.counters = message[3]
                if future is None or future.done():
                    continue
                if kind in ("done", "state"):
                    future.set_result(message[2])
                elif kind == "fail":
                    future.set_exception(message[2])
                else:  # "cancelled": the waiter is gone already
                    future.cancel()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if not self.connected:
                return  # closing
            log.error("HTTP worker %d lost the batching process (%s); failing its requests", self.index, exc)
            self.connected = False
            self._fail_pending("The batching process stopped (the service is restarting or failed).")
            if self.on_lost is not None:
                self.on_lost()

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for future, _slot in pending.values():
            if not future.done():
                future.set_exception(EngineFailedError(why))


class RemoteScheduler:
    """`Scheduler`'s interface in an HTTP worker: every submit goes to the batching process."""

    def __init__(self, link: HubLink) -> None:
        self.link = link

    @property
    def options(self) -> SchedulerOptions:
        return self.link.options

    @property
    def running(self) -> bool:
        return self.link.connected

    # As of the batching process's last answer to this worker (/api/info asks it afresh).
    @property
    def queue_depth(self) -> int:
        return self.link.counters[0]

    @property
    def busy(self) -> bool:
        return self.link.counters[1]

    @property
    def batches_run(self) -> int:
        return self.link.counters[2]

    @property
    def items_run(self) -> int:
        return self.link.counters[3]

    async def start(self) -> None:
        await self.link.connect()

    async def stop(self) -> None:
        await self.link.close()

    async def submit(
        self, audio: np.ndarray, hotwords: Sequence[str] = (), *, block: bool = False, priority: int = NORMAL
    ) -> Any:
        return await self.link.submit(audio, hotwords, block=block, priority=priority)

    async def submit_unless_busy(self, audio: np.ndarray, hotwords: Sequence[str] = (), *, max_waiting: int) -> Any:
        # Refused here at once when the last known queue is long already; else the hub decides.
        if self.queue_depth >= max_waiting:
            raise QueueFullError(
                f"{self.queue_depth} requests are waiting; optional work is skipped.",
                retry_after_s=self.options.retry_after_s,
            )
        return await self.link.submit(audio, hotwords, block=False, priority=NORMAL, max_waiting=max_waiting)


class RemoteEngine:
    """The engine as an HTTP worker sees it: its `info()` only (it runs in the batching process)."""

    def __init__(self, link: HubLink) -> None:
        self.link = link

    def info(self) -> dict[str, Any]:
        return dict(self.link.engine_info)

    def transcribe(self, audios: Sequence[np.ndarray], hotwords: Any = None) -> list[Any]:
        raise RuntimeError("In an HTTP worker the engine runs in the batching process: submit to the scheduler.")


def _call_from_thread(link: HubLink, coroutine: Any) -> Any:
    """Run `coroutine` on the link's event loop and wait for it here: for the pipeline's threads
    (never the link's own loop, which carries the answer)."""
    loop = link._loop
    if loop is None:
        coroutine.close()
        raise EngineFailedError("The batching process is not connected.")
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the usual case
        running = None
    if running is loop:
        coroutine.close()
        raise RuntimeError("A served network's call blocks: make it from a worker thread.")
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


class RemoteSilero:
    """`TorchSilero.lane_probs` (a recording's blocks) run by the batching process
    (`longform.vad_in_engine`). Live streams have a VAD of their own (asr/service/live.py), a
    call every tick, which stays in the worker."""

    def __init__(self, link: HubLink) -> None:
        self.link = link

    def lane_probs(self, ext: np.ndarray, n_lanes: int, lane: int, steps: int) -> np.ndarray:
        # Copied into the arena here, on the VAD's thread: a block is tens of MB, too long a copy
        # for the link's event loop.
        ext = np.ascontiguousarray(ext, dtype=np.float32)
        slot, path = self.link._lend(ext)
        return _call_from_thread(self.link, self.link.vad_lane_probs(slot, path, len(ext), n_lanes, lane, steps))


class RemotePuncNetwork:
    """`PuncNetwork.classes` run by the batching process (`longform.punc_in_engine`), called
    from the pipeline's threads (never from the link's event loop, which carries the answer)."""

    def __init__(self, link: HubLink) -> None:
        self.link = link

    def classes(self, ids: Sequence[Sequence[int]], batch_words: int) -> list[np.ndarray]:
        rows = [list(map(int, row)) for row in ids]
        return _call_from_thread(self.link, self.link.punctuate(rows, batch_words))


class RemoteMetrics:
    """`Metrics` in an HTTP worker: requests are counted in the batching process (one registry for
    the whole service); /metrics and the throughput show its figures as last fetched."""

    def __init__(self, link: HubLink) -> None:
        self.link = link

    def observe_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        self.link.send(("request", endpoint, status, seconds))

    def observe_batch(self, stats: BatchStats) -> None:  # batches happen in the batching process
        pass

    def throughput(self) -> dict[str, float]:
        return dict(self.link.state.get("throughput", {}))

    def render(self) -> bytes:
        return bytes(self.link.state.get("metrics", b""))


__all__ = [
    "AudioArena", "BatchHub", "FrontConfig", "HubLink", "RemoteEngine", "RemoteMetrics", "RemotePuncNetwork",
    "RemoteScheduler", "RemoteSilero",
]  # fmt: skip

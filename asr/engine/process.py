"""The engine in a process of its own (`engine.process`).

Every PyTorch call gives the GIL up and has to take it back. In the service's process the event
loop, result assembly, the live VAD tick and the decoders' threads run Python all the time, so
each of an eager batch's thousands of calls waited for a turn: measured on an H200 under load, an
engine batch took about a second that the engine alone runs in a tenth of it, and the GPU was
busy 4-7% of the time (BENCHMARKS.md, "What limits the service"). In a process of its own the
engine's threads are the only Python there.

The child is spawned (the parent may have CUDA and threads running), loads the model from the
same `EngineSettings` and answers one call at a time over a pipe. Audio goes through one shared
memory area (a memfd, grown when a call needs more; on systems without memfd, through the pipe):
the parent copies each clip in once, the child's engine reads it in place. Results come back as
the engine's own `Transcript`s, errors as the engine's own exceptions (typed errors keep their
code). A child that dies (killed, a CUDA fault) fails the call it was running with
EngineRestartedError (an EngineFailedError) and is started again for the next one: the scheduler
then runs that batch's items again, each alone and once, so no accepted request is lost to it
(an input that kills the engine itself fails after its second try).

A second pipe, served by a thread of the child, runs the punctuation network and the file VAD's
network for the pipelines in front of the engine (`serve_punctuation`, `serve_vad`;
`longform.punc_in_engine`, `longform.vad_in_engine`) without waiting behind a recognition call;
its audio goes through a shared area of its own.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from asr.engine.batching import check_audio, per_item_hotwords
from asr.errors import EngineFailedError, EngineRestartedError, ModelLoadError
from asr.settings import EngineSettings

log = logging.getLogger(__name__)

_MIN_AREA = 64 << 20  # bytes: 17 minutes of float32 audio; grown to the next power of two
_POLL_S = 0.5  # how often a waiting call checks that the child is alive


class _ChildDied(Exception):
    """The child exited (or its pipe broke) before answering."""


class EngineProcess:
    """An `asr.engine.Engine` in a spawned child process, behind the same `transcribe` and `info`.

    Thread-safe: calls are served one at a time (the engine pipelines a call's batches itself).
    """

    def __init__(self, settings: EngineSettings, *, start_timeout_s: float = 900.0) -> None:
        self.settings = settings
        self._timeout_s = start_timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._area: mmap.mmap | None = None
        self._area_size = 0
        self._info: dict[str, Any] = {}
        self._closed = False
        # The side pipe (punctuation, the file VAD): its own lock, so a call never waits behind a
        # recognition.
        self._side_lock = threading.Lock()
        self._side: Connection | None = None
        self._side_area: mmap.mmap | None = None
        self._side_area_size = 0
        self._side_loads: dict[str, tuple[Any, ...]] = {}  # what a new child loads again
        self.restarts = 0
        """Children started again after one died."""
        with self._lock:
            self._start()

    # ---------------------------------------------------------------- life cycle
    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        side_parent, side_child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_serve, args=(self.settings.model_dump(mode="json"), child, side_child, logging.getLogger().level),
            name="asr-engine", daemon=True,
        )
        self._proc.start()
        child.close()
        side_child.close()
        self._conn = parent
        self._area, self._area_size = None, 0
        try:
            reply = self._reply(self._timeout_s, "while loading the model")
        except BaseException as exc:
            # A child that could not load is ending (or hung): wait for it, so that no process
            # outlives the error its caller gets.
            parent.close()
            self._conn = None
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            side_parent.close()
            if isinstance(exc, _ChildDied):
                raise ModelLoadError(str(exc)) from None
            raise
        self._info = {**reply, "process": self._proc.pid}
        with self._side_lock:
            old, self._side = self._side, side_parent
            self._close_side_area()
        if old is not None:
            old.close()
        log.info("engine process %d ready", self._proc.pid)
        for load in list(self._side_loads.values()):  # a new child after a restart: the same networks
            try:
                self._side_call(load, "while loading a model for the pipelines")
            except Exception as exc:  # noqa: BLE001 - recognition goes on; those calls fail typed
                log.error("the new engine process could not load %s: %s", load[0], exc)

    def close(self) -> None:
        """Stop the child (the engine is not to be used afterwards)."""
        self._closed = True
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send(("close",))
                self._conn.close()
                self._conn = None
            if self._proc is not None:
                self._proc.join(10)
                if self._proc.is_alive():
                    self._proc.kill()
                    self._proc.join()
            if self._area is not None:
                self._area.close()
                self._area = None
        with self._side_lock:
            if self._side is not None:
                self._side.close()
                self._side = None
            self._close_side_area()

    def __del__(self) -> None:  # a dropped engine does not leave its process behind
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.is_alive():
            proc.kill()

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    # ---------------------------------------------------------------- the engine's API
    def info(self) -> dict[str, Any]:
        """The child engine's `info()` as of its last answer, plus its process id."""
        return dict(self._info)

    def transcribe(
        self,
        audios: Sequence[np.ndarray],
        hotwords: Sequence[str] | Sequence[Sequence[str]] | None = None,
    ) -> list[Any]:
        """`Engine.transcribe`, run in the child."""
        # The engine's errors for the layout here; its scan for NaN runs in the child (once).
        clips = [check_audio(audio, i, finite=False) for i, audio in enumerate(audios)]
        lists = per_item_hotwords(hotwords, len(clips))
        with self._lock:
            if self._closed:
                raise EngineFailedError("The engine process was closed (the service is stopping).")
            if self._proc is None or not self._proc.is_alive():
                self._restart("it was not running")
            try:
                spans = self._stage(clips)
                assert self._conn is not None
                self._conn.send(("transcribe", spans, lists))
                return list(self._reply(None, "while recognising"))
            except (_ChildDied, BrokenPipeError, ConnectionError) as exc:
                # (A pipe error: the child died between the check above and the send.)
                if not self._closed:
                    self._restart("it stopped while recognising")
                if isinstance(exc, _ChildDied):
                    raise EngineRestartedError(str(exc)) from None
                raise EngineRestartedError(f"The engine process stopped while recognising ({exc}).") from None

    def serve_punctuation(self, model_dir: str, device: str = "auto") -> ChildPunctuation:
        """Load the punctuation network (`asr.pipeline.punc.PuncNetwork`) in the child, on
        `device` ('auto': the engine's device), and return it as a network whose `classes` run
        there: one GPU context and one copy of the weights for every pipeline in front of this
        engine (HTTP workers, file workers) instead of one per process. A child started again
        after a failure loads it again. Raises the child's ModelLoadError."""
        load = ("load_punc", str(model_dir), device)
        self._side_call(load, "while loading the punctuation model")
        self._side_loads["punc"] = load
        return ChildPunctuation(self)

    def punctuation_classes(self, ids: Sequence[Sequence[int]], batch_words: int) -> list[np.ndarray]:
        """`PuncNetwork.classes` in the child (after `serve_punctuation`)."""
        return list(self._side_retry(lambda: self._side_call(("punc", ids, batch_words), "while punctuating")))

    def serve_vad(self, device: str = "auto") -> ChildSilero:
        """Load Silero VAD's PyTorch network (`asr.pipeline.silero_torch.TorchSilero`) in the
        child, on `device` ('auto': the engine's), and return it as a network whose
        `lane_probs` (a recording's blocks) run there; as `serve_punctuation`."""
        load = ("load_vad", device)
        self._side_call(load, "while loading the VAD model")
        self._side_loads["vad"] = load
        return ChildSilero(self)

    def vad_lane_probs(self, ext: np.ndarray, n_lanes: int, lane: int, steps: int) -> np.ndarray:
        """`TorchSilero.lane_probs` in the child (after `serve_vad`): `ext` crosses through the
        side area, copied once."""
        ext = np.ascontiguousarray(ext, dtype=np.float32)
        return np.asarray(self._side_retry(
            lambda: self._side_call(("vad", None, n_lanes, lane, steps), "while deciding speech", audio=ext)))

    def _side_retry(self, call: Callable[[], Any]) -> Any:
        """`call()`; a child that dies during it is started again (as a recognition call would)
        and the call made once more: its input is still here."""
        for attempt in (0, 1):
            try:
                return call()
            except _ChildDied as exc:
                if self._closed:
                    raise EngineFailedError("The engine process was closed (the service is stopping).") from None
                if attempt:
                    raise EngineRestartedError(str(exc)) from None
                with self._lock:
                    if self._closed:
                        raise EngineFailedError("The engine process was closed (the service is stopping).") from None
                    if self._proc is None or not self._proc.is_alive():
                        self._restart("it stopped during a call for the pipelines")
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- internals
    def _side_call(self, message: tuple[Any, ...], doing: str, audio: np.ndarray | None = None) -> Any:
        """One call on the side pipe: the child thread's answer, or its exception raised here.
        `audio` goes through the side area (its place replaces the message's second item)."""
        with self._side_lock:
            conn, proc = self._side, self._proc
            if conn is None or proc is None:
                raise _ChildDied(f"The engine process was not running {doing}.")
            try:
                if audio is not None:
                    message = (message[0], self._stage_side(audio, conn, proc.pid), *message[2:])
                conn.send(message)
                while not conn.poll(_POLL_S):
                    if not proc.is_alive():
                        raise _ChildDied(f"The engine process stopped {doing} (exit code {proc.exitcode}).")
                kind, value, _ = conn.recv()
            except (EOFError, OSError) as exc:
                raise _ChildDied(f"The engine process stopped {doing} ({type(exc).__name__}).") from None
        if kind == "error":
            raise value
        return value

    def _stage_side(self, audio: np.ndarray, conn: Connection, pid: int) -> Any:
        """(offset, samples) of `audio` in the side area, grown as needed, or the array itself
        where there is no memfd. Under `_side_lock`."""
        if not hasattr(os, "memfd_create"):
            return audio
        if audio.nbytes > self._side_area_size:
            area, size = _new_area(audio.nbytes, conn, pid)
            self._close_side_area()
            self._side_area, self._side_area_size = area, size
        assert self._side_area is not None
        np.frombuffer(self._side_area, np.float32, len(audio))[:] = audio
        return (0, len(audio))

    def _close_side_area(self) -> None:
        if self._side_area is not None:
            self._side_area.close()
        self._side_area, self._side_area_size = None, 0

    def _stage(self, clips: list[np.ndarray]) -> list[Any]:
        """Where the child finds each clip: (offset, samples) in the shared area, or the array."""
        if not hasattr(os, "memfd_create"):
            return clips
        need = sum(c.nbytes for c in clips)
        if need > self._area_size:
            self._grow(need)
        assert self._area is not None
        spans, offset = [], 0
        for clip in clips:
            np.frombuffer(self._area, np.float32, len(clip), offset)[:] = clip
            spans.append((offset, len(clip)))
            offset += clip.nbytes
        return spans

    def _grow(self, need: int) -> None:
        assert self._conn is not None
        area, size = _new_area(need, self._conn, self._proc.pid)
        if self._area is not None:
            self._area.close()
        self._area, self._area_size = area, size

    def _reply(self, timeout_s: float | None, doing: str) -> Any:
        """The child's answer to the last message: its value, or its exception raised here."""
        assert self._conn is not None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._conn.poll(_POLL_S):
            if not self._proc.is_alive():
                raise _ChildDied(f"The engine process stopped {doing} (exit code {self._proc.exitcode}).")
            if deadline is not None and time.monotonic() > deadline:
                self._proc.kill()
                raise ModelLoadError(f"The engine process did not answer within {timeout_s:g} s {doing}.")
        try:
            kind, value, info = self._conn.recv()
        except (EOFError, OSError):
            raise _ChildDied(f"The engine process stopped {doing}.") from None
        if info:
            self._info.update(info)
        if kind == "error":
            raise value
        return value

    def _restart(self, why: str) -> None:
        log.error("engine process %s: %s; starting a new one", self._proc.pid if self._proc else "-", why)
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        with self._side_lock:  # a side call waiting on the old child has failed by now
            if self._side is not None:
                self._side.close()
                self._side = None
        self.restarts += 1
        self._start()


def _new_area(need: int, conn: Connection, pid: int) -> tuple[mmap.mmap, int]:
    """A shared area of at least `need` bytes (the next power of two), announced to the child on
    `conn`, which maps it in place of the one before."""
    from multiprocessing import reduction

    size = max(_MIN_AREA, 1 << (need - 1).bit_length())
    fd = os.memfd_create("asr-engine-audio")
    try:
        os.ftruncate(fd, size)
        area = mmap.mmap(fd, size)
        conn.send(("area", size))
        reduction.send_handle(conn, fd, pid)
    finally:
        os.close(fd)
    return area, size


class ChildSilero:
    """Silero VAD's network in an `EngineProcess`'s child, as `TorchSilero` for a recording's
    blocks (`lane_probs`)."""

    def __init__(self, engine: EngineProcess) -> None:
        self.engine = engine

    def lane_probs(self, ext: np.ndarray, n_lanes: int, lane: int, steps: int) -> np.ndarray:
        return self.engine.vad_lane_probs(ext, n_lanes, lane, steps)


class ChildPunctuation:
    """The punctuation network in an `EngineProcess`'s child, as a `PuncNetwork` (`classes`)."""

    def __init__(self, engine: EngineProcess) -> None:
        self.engine = engine

    def classes(self, ids: Sequence[Sequence[int]], batch_words: int) -> list[np.ndarray]:
        return self.engine.punctuation_classes(ids, batch_words)


# -------------------------------------------------------------------- the child
def _serve(settings: dict[str, Any], conn: Connection, side: Connection, log_level: int) -> None:
    """The child's main: load the engine, then answer until told to close or the parent goes."""
    import signal

    # Ctrl-C in a terminal (or a stop signal to the process group) reaches the child too; the
    # parent owns shutdown: it finishes or fails what is in flight, then closes the child. A parent
    # that is killed outright closes the pipe, and the child ends at its next receive.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level or logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = _load(EngineSettings.model_validate(settings))
    except BaseException as exc:  # noqa: BLE001 - the parent raises it
        _answer(conn, "error", exc, None)
        return
    _answer(conn, "ok", engine.info(), None)
    threading.Thread(target=_serve_side, args=(side, engine), name="asr-engine-side", daemon=True).start()
    area: mmap.mmap | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] == "close":
            return
        if message[0] == "area":
            area = _map_area(conn, message[1], area)
            continue
        _, spans, lists = message
        try:
            audios = [
                s if isinstance(s, np.ndarray) else np.frombuffer(area, np.float32, s[1], s[0])  # type: ignore[arg-type]
                for s in spans
            ]
            results = engine.transcribe(audios, lists)
            del audios  # no view of the area outlives the call (the area may be replaced)
            _answer(conn, "ok", results, {"cuda_graph_captures": engine.info()["cuda_graph_captures"]})
        except Exception as exc:  # noqa: BLE001 - the parent raises it
            audios = None
            _answer(conn, "error", exc, None)


def _map_area(conn: Connection, size: int, old: mmap.mmap | None) -> mmap.mmap:
    from multiprocessing import reduction

    fd = reduction.recv_handle(conn)
    if old is not None:
        old.close()
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _serve_side(conn: Connection, engine: Any) -> None:
    """The child's side pipe: load the pipelines' networks (punctuation, the file VAD), then run
    them, one call at a time."""
    punc: Any = None
    vad: Any = None
    area: mmap.mmap | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone, or this child is being replaced
        kind = message[0]
        if kind == "area":
            area = _map_area(conn, message[1], area)
            continue
        try:
            if kind == "load_punc":
                from asr.pipeline.punc import PuncNetwork

                _, model_dir, device = message
                punc = PuncNetwork(model_dir, str(engine.device) if device == "auto" else device)
                _answer(conn, "ok", None, None)
            elif kind == "load_vad":
                from asr.pipeline.silero_torch import TorchSilero

                vad = TorchSilero(engine.device if message[1] == "auto" else message[1])
                _answer(conn, "ok", None, None)
            elif kind == "punc":
                if punc is None:
                    raise EngineFailedError("The engine process has no punctuation model loaded.")
                _answer(conn, "ok", punc.classes(message[1], message[2]), None)
            elif kind == "vad":
                if vad is None:
                    raise EngineFailedError("The engine process has no VAD model loaded.")
                _, span, n_lanes, lane, steps = message
                ext = span if isinstance(span, np.ndarray) else np.frombuffer(area, np.float32, span[1], span[0])  # type: ignore[arg-type]
                probs = vad.lane_probs(ext, n_lanes, lane, steps)
                del ext  # no view of the area outlives the call (the area may be replaced)
                _answer(conn, "ok", probs, None)
            else:
                raise EngineFailedError(f"Unknown call {kind!r}.")
        except Exception as exc:  # noqa: BLE001 - the parent raises it
            _answer(conn, "error", exc, None)


def _load(settings: EngineSettings) -> Any:
    from asr.engine.core import Engine
    from asr.runtime import configure_torch

    # The engine's own threads (its batch pipeline, the timestamp side stream) are the only ones
    # here, but they still take turns: the same switch interval as in the server.
    configure_torch(settings)
    return Engine.from_settings(settings)


def _answer(conn: Connection, kind: str, value: Any, info: dict[str, Any] | None) -> None:
    try:
        conn.send((kind, value, info))
    except (pickle.PicklingError, TypeError, AttributeError):
        # An exception that does not pickle is sent as the failure it is.
        failure = EngineFailedError(f"Recognition failed ({type(value).__name__}: {str(value)[:200]}).")
        conn.send(("error", failure, info))


# Input the CLI is given below which 'auto' keeps the engine in its own process: a second
# process's start (its interpreter, torch, the model) is paid before the first result, and a
# few minutes of audio do not keep the GIL busy long enough to win it back.
SMALL_INPUT_BYTES = 10 << 20  # ~30 min of 48 kbps mp3, 5 min of 16 kHz WAV


def load_engine(settings: EngineSettings, input_bytes: int | None = None) -> Any:
    """The engine `settings` ask for: `EngineProcess`, an in-process `Engine` (see
    `EngineSettings.process` and `wants_process`) or, on a CPU with `cpu_processes` above one
    (explicit, or 0 on 8 cores and more), an `EnginePool` of engine processes."""
    from asr.engine.core import Engine
    from asr.engine.model import default_device

    if settings.process != "off" and default_device(settings.device).type == "cpu":
        from asr.engine.pool import EnginePool, cpu_processes
        from asr.runtime import own_process, usable_cores

        cores = settings.num_threads or usable_cores()
        # 'auto' spawns only from the product's own entry points, and not for a small input whose
        # recognition takes less than the other processes' start, as `wants_process` explains.
        small = input_bytes is not None and input_bytes < SMALL_INPUT_BYTES
        n = cpu_processes(settings, cores) if settings.cpu_processes or (own_process() and not small) else 1
        if n > 1:
            return EnginePool(settings, n, max(1, cores // n))
    if wants_process(settings, input_bytes):
        return EngineProcess(settings)
    return Engine.from_settings(settings)


def wants_process(settings: EngineSettings, input_bytes: int | None = None) -> bool:
    """'auto' means: on a GPU, only in a process one of the product's entry points started (a
    spawned child re-imports the parent's main module; a user's script may lack its guard), and
    not for a known small input (`input_bytes`, the CLI's files) where the start costs more."""
    if settings.process != "auto":
        return settings.process == "on"
    from asr.engine.model import default_device
    from asr.runtime import own_process

    if input_bytes is not None and input_bytes < SMALL_INPUT_BYTES:
        return False
    return own_process() and default_device(settings.device).type == "cuda"

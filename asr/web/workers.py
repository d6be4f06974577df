"""Several HTTP worker processes in front of one batching process (`server.http_workers` > 1).

The process `webui.py` starts becomes the supervisor and the batching process at once:

1. it loads the engine (on a GPU in `EngineProcess`'s child, as in one-process mode), starts the
   one scheduler and warms it up (`asr.service.front.BatchHub`), serving a unix socket in a
   private runtime folder (in /dev/shm, which also holds the workers' shared audio blocks);
2. it binds the listening socket (after the warm-up, so the port opens with the model ready);
3. it spawns N workers, each running the unchanged app under uvicorn on a listening socket of its
   own on the same port (SO_REUSEPORT: the kernel spreads connections over them, see
   `listening_sockets`); their pipelines submit to the batching process;
4. it watches them: a worker that exits is started again (its in-flight requests fail with it:
   the client sees the connection close); one that keeps dying right after its start stops the
   service with an error instead of restarting forever. SIGINT/SIGTERM stop the workers (uvicorn
   finishes their open requests while the batching process still serves them), then the
   batching process and the engine.

Why this shape and not uvicorn's `workers=N`: uvicorn's supervisor cannot hold the scheduler
(its workers import the app each on their own), and worker 0 has to be known: it alone runs the
batch jobs (asr/service/core.py), so a job file is claimed by one process only.

What each worker holds: its own punctuation / ITN / VAD models (memory per worker; with
`longform.punc_in_engine` / `vad_in_engine` the punctuation network / Silero's network on
recordings run once, in the engine's process) and its own
live WebSocket streams (a stream stays on the connection's worker). Not available: the web UI
(`server.ui` must be false; Gradio keeps each browser's session in one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from asr.errors import ConfigError
from asr.service.front import BatchHub, FrontConfig, runtime_dir, worker_settings
from asr.settings import Settings

log = logging.getLogger(__name__)

_WATCH_S = 0.5
_STOP_S = 30.0  # how long stopping workers may finish their open requests
_EARLY_S = 60.0  # a worker that exits sooner than this after its start "died young"
_MAX_EARLY = 3  # this many young deaths in a row of one worker stop the service


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings every serving process uses (one process or each worker)."""
    return {
        "log_level": settings.log_level.lower(),
        "ws_ping_interval": settings.live.ping_interval_s,
        "ws_ping_timeout": settings.live.ping_timeout_s,
        # No permessage-deflate: PCM audio barely compresses, and inflating every 60 ms message
        # took a fifth of the event loop's time at 300 live streams (profiled on an H200 box).
        "ws_per_message_deflate": False,
    }


def listening_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """Worker i's listening socket, bound here and held by the supervisor for its whole life.

    One socket per worker on the same address (SO_REUSEPORT), not one socket shared by all: the
    kernel then spreads new connections over the workers by their addresses. On one shared socket
    every waiting worker is woken and asyncio's accept loop takes up to `backlog` connections per
    wake-up, so a burst of clients lands mostly on one worker (measured on loopback with 2 workers
    and 64 keep-alive clients: 42/22 and 46/18 requests in the first round, 97/31 after). A socket
    stays open while its worker restarts: connections hashed to it wait in its backlog for the new
    worker instead of being refused. The port is first bound once without SO_REUSEPORT, so a
    second server on the same port still fails with "address in use" instead of sharing it.
    Without SO_REUSEPORT (not Linux) all workers share one socket.
    """
    import uvicorn

    if not hasattr(socket, "SO_REUSEPORT"):
        return [uvicorn.Config("asr.web.app:create_app", host=host, port=port).bind_socket()] * n
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))  # "address in use" when anything listens there
        except OSError as exc:
            raise ConfigError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
        port = probe.getsockname()[1]  # (port 0: the one the system picked)
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)  # uvicorn's default backlog
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    log.info("listening on %s:%d, one socket per HTTP worker (SO_REUSEPORT)", host, port)
    return socks


def _worker_main(settings_data: dict[str, Any], config: FrontConfig, sock: socket.socket, log_level: int) -> None:
    """One HTTP worker: the app with a link to the batching process, on the shared socket."""
    import uvicorn

    from asr.runtime import configure_process
    from asr.web.app import create_app

    logging.basicConfig(level=log_level or logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.model_validate(settings_data)
    configure_process(settings)
    os.umask(0o077)
    app = create_app(settings, front=config)
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings)))
    lost = False

    def on_lost() -> None:
        # Without the batching process this worker cannot serve: stop (the supervisor, if it is
        # alive, starts a new one; if it is gone, so is the service).
        nonlocal lost
        lost = True
        server.should_exit = True

    app.state.service.front.on_lost = on_lost
    server.run(sockets=[sock])
    if lost or not server.started:
        raise SystemExit(1)


@dataclasses.dataclass
class _Slot:
    index: int
    process: Any = None
    started_at: float = 0.0
    early_deaths: int = 0
    restarts: int = 0


class Supervisor:
    """The batching process and the watcher of its HTTP workers (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.n = settings.server.http_workers
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(self.n)]
        self._stop = asyncio.Event()
        self.failed: str | None = None

    def run(self) -> None:
        from asr.engine.process import load_engine

        # Loaded before any worker starts: a bad model fails here, once.
        engine = load_engine(self.settings.engine)
        runtime = runtime_dir()
        try:
            asyncio.run(self._serve(engine, runtime))
        finally:
            engine.close()
            shutil.rmtree(runtime, ignore_errors=True)
        if self.failed:
            log.error("%s", self.failed)
            raise SystemExit(1)

    async def _serve(self, engine: Any, runtime: Path) -> None:
        from asr.pipeline.audio import SAMPLE_RATE
        from asr.pipeline.models import served_punctuation, served_vad
        from asr.pipeline.pipeline import scheduler_options

        punctuation = await asyncio.to_thread(served_punctuation, self.settings, engine)
        vad = await asyncio.to_thread(served_vad, self.settings, engine)
        hub = BatchHub(scheduler_options(self.settings, getattr(engine, "engines", 1)), engine, sample_rate=SAMPLE_RATE,
                       punctuation=punctuation, vad=vad)
        socket_path = str(runtime / "hub.sock")
        await hub.start(socket_path, warmup=self.settings.engine.warmup)
        server = self.settings.server
        # Bound after the warm-up: the port opens with the model ready; connections made while the
        # workers start wait in the listen backlog.
        socks = listening_sockets(server.host, server.port, self.n)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        data = worker_settings(self.settings, self.n).model_dump(mode="json")
        try:
            for slot in self._slots:
                self._spawn(slot, data, FrontConfig(slot.index, socket_path, str(runtime)), socks[slot.index])
            log.info("batching process %d serving %d HTTP workers on %s:%d", os.getpid(), self.n,
                     server.host, server.port)  # fmt: skip
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), _WATCH_S)
                for slot in self._slots:
                    if self._stop.is_set() or slot.process.is_alive():
                        continue
                    self._reap(slot)
                    if self.failed:
                        self._stop.set()
                        break
                    self._spawn(slot, data, FrontConfig(slot.index, socket_path, str(runtime)), socks[slot.index])
        finally:
            await self._stop_workers()
            for sock in socks:
                sock.close()
            await hub.stop()

    def _spawn(self, slot: _Slot, data: dict[str, Any], config: FrontConfig, sock: socket.socket) -> None:
        from asr.web.workers import _worker_main  # the spawned child imports it by this name

        slot.process = self._ctx.Process(
            target=_worker_main, args=(data, config, sock, logging.getLogger().level),
            name=f"asr-http-{slot.index}",
        )  # fmt: skip
        slot.process.start()
        slot.started_at = time.monotonic()

    def _reap(self, slot: _Slot) -> None:
        code = slot.process.exitcode
        lived = time.monotonic() - slot.started_at
        slot.early_deaths = slot.early_deaths + 1 if lived < _EARLY_S else 0
        slot.restarts += 1
        if slot.early_deaths >= _MAX_EARLY:
            self.failed = (
                f"HTTP worker {slot.index} exited {slot.early_deaths} times in a row within {_EARLY_S:g} s of "
                f"its start (last exit code {code}); stopping the service (see the log above)."
            )
            return
        log.error("HTTP worker %d (pid %d) exited with code %s after %.0f s; starting it again",
                  slot.index, slot.process.pid, code, lived)  # fmt: skip

    async def _stop_workers(self) -> None:
        alive = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
        for process in alive:
            process.terminate()  # uvicorn's graceful shutdown: open requests finish
        deadline = time.monotonic() + _STOP_S
        while any(p.is_alive() for p in alive) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the hub keeps serving their last requests meanwhile
        for process in alive:
            if process.is_alive():
                process.kill()
            process.join()


def serve_workers(settings: Settings) -> None:
    """Serve with `server.http_workers` HTTP workers (see the module docstring)."""
    Supervisor(settings).run()

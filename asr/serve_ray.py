"""`python -m asr serve-ray`: the HTTP API as a Ray Serve application, one replica per GPU.

Each replica is a whole service, built by the same `create_app` as `webui.py --no-ui`: its own
engine (on the GPU Ray gives it), scheduler and batcher, pipeline, job worker and metrics. The
routes, auth, limits and typed errors are the app's own, unchanged; Serve only carries requests
from its proxy (listening on `server.host:server.port`, on every node of the cluster) to a
replica. Serve's router picks, for each request, the replica with fewer requests in flight of two
sampled at random (power of two choices): requests spread by queue depth.

Batch jobs: every replica runs a job worker on the one job store in the data directory (SQLite,
shared by the processes of one machine, or of several machines only on a shared filesystem that
does SQLite's locking right, see docs/serve-ray.md). A file is claimed by exactly one replica
(its id and a lease, renewed by a thread while it lives, asr/service/jobs.py); a replica that
dies leaves its files to the others when the lease runs out; one that stops cleanly gives them
back at once. Uploads are files in the data directory, so any replica can run any job's files
and answer any job's status and downloads.

Not here: the web UI (Gradio keeps a browser's session in one process; requests of one browser
would reach different replicas) and `server.http_workers` (a replica is one process; more
replicas are the way to more processes).

Ray Serve is an optional dependency (`pip install "ray[serve]"`), imported only here and only
when the command runs. docs/serve-ray.md has the command and when to use it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.archive_ray import MissingRayError, actor_settings
from asr.errors import ASRError, ConfigError

if TYPE_CHECKING:
    from asr.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "asr"
INSTALL_HINT = 'serve-ray needs Ray Serve: pip install "ray[serve]"'


def import_serve() -> tuple[Any, Any]:
    """Ray and Ray Serve, or a message naming the install command."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise MissingRayError(f"{INSTALL_HINT} ({exc})") from exc
    return ray, serve


class ServiceReplica:
    """One Serve replica: the service's FastAPI app, built in the replica's process.

    Serve builds the app through `__serve_build_asgi_app__` (its late-bound ingress) after the
    constructor, in the replica, so the engine is loaded where the replica's GPU is, and runs the
    app's lifespan (scheduler start, warm-up, job worker) before the replica takes requests."""

    def __init__(self, settings_data: dict[str, Any]) -> None:
        self._settings_data = settings_data
        self._app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        from ray import serve

        from asr.runtime import configure_process
        from asr.settings import Settings
        from asr.web.app import create_app

        settings = Settings.model_validate(self._settings_data)
        configure_process(settings)
        # As `webui.py` does: uploads and the job database are for this user only.
        os.umask(0o077)
        context = serve.get_replica_context()
        # Unique per replica start (a restarted replica is a new owner: its predecessor's claims
        # expire, they are not silently taken over by the same name).
        replica = f"{socket.gethostname()}:{os.getpid()}:{context.replica_id.unique_id}"
        self._app = create_app(settings, replica=replica)
        return self._app

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose scheduler stopped cannot serve; Serve
        replaces it (its job files come back after the lease)."""
        if self._app is not None and not self._app.state.service.scheduler.running:
            raise RuntimeError("the replica's scheduler is not running")


def replica_settings(settings: Settings, cpus: float) -> Settings:
    """A replica's settings: the API alone (no UI), one process, threads and decoding processes
    sized to the CPUs Ray gives it (as the archive's actors: automatic values would count every
    core of the machine in every replica)."""
    settings = actor_settings(settings, cpus)
    server = settings.server.model_copy(update={
        "ui": False, "http_workers": 1, "share": False, "autolaunch": False,
        # Resolved here, where the command runs: a replica's working directory is Ray's, not the
        # command's, and every replica must find the one data directory.
        "data_dir": settings.server.data_dir.resolve(),
        "jobs_db": settings.server.jobs_db.resolve() if settings.server.jobs_db else None,
    })  # fmt: skip
    engine = settings.engine
    if Path(engine.model).exists():  # a local model directory (else a ModelScope id: left as it is)
        engine = engine.model_copy(update={"model": str(Path(engine.model).resolve())})
    return settings.model_copy(update={"server": server, "engine": engine})


def deploy(
    settings: Settings,
    *,
    replicas: int | None = None,
    gpus_per_replica: float | None = None,
    cpus_per_replica: float = 1.0,
    max_ongoing_requests: int | None = None,
) -> dict[str, Any]:
    """Start Serve (its proxy on `server.host:server.port`) on the Ray this process is connected
    to (a local one is started if none is) and run the service as APP_NAME; returns once every
    replica has started (engine loaded, warmed up). Returns what was deployed."""
    ray, serve = import_serve()
    if not ray.is_initialized():
        # A local Ray for this machine; no dashboard (Serve does not need it).
        ray.init(include_dashboard=False, logging_level="WARNING")
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_replica is None:
        gpus_per_replica = 1.0 if gpus else 0.0
    if replicas is None:
        replicas = max(1, int(gpus // gpus_per_replica)) if gpus_per_replica else 1
    if replicas < 1:
        raise ConfigError("--replicas must be at least 1")
    settings = replica_settings(settings, cpus_per_replica)
    if max_ongoing_requests is None:
        # A replica takes as many requests as its scheduler would queue: it answers 503 queue_full
        # (with Retry-After) itself once its queue is full, as the one-process service does, and
        # its batches fill from them. Only beyond this would Serve hold requests in its proxy.
        max_ongoing_requests = settings.limits.max_queue
    serve.start(http_options={"host": settings.server.host, "port": settings.server.port})
    deployment = serve.deployment(
        serve.ingress()(ServiceReplica),
        name="ServiceReplica",
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        # A stopping replica finishes its open requests (a transcription may take the whole
        # request timeout) before its lifespan stops the service and gives its job files back.
        graceful_shutdown_timeout_s=settings.limits.request_timeout_s,
        health_check_period_s=10,
        health_check_timeout_s=60,
    )
    serve.run(deployment.bind(settings.model_dump(mode="json")), name=APP_NAME, route_prefix="/")
    return {"replicas": replicas, "gpus_per_replica": gpus_per_replica, "cpus_per_replica": cpus_per_replica,
            "max_ongoing_requests": max_ongoing_requests, "host": settings.server.host, "port": settings.server.port}


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings `webui.py` would build from the same flags (profile, ASR_* variables, flags)."""
    from asr.web.launch import settings_from_args as launch_settings

    full = argparse.Namespace(
        config=args.config, host=args.host, port=args.port, model=args.model, data_dir=args.data_dir,
        max_batch_size=args.max_batch_size, log_level=args.log_level, no_ui=True, no_gradio_queue=False,
        http_workers=None, share=False, autolaunch=None, enable_xformers=False,
    )  # fmt: skip
    return launch_settings(full)


def _deployment_message(serve: Any) -> str:
    """What Serve recorded about the replicas that failed to start (their traceback), if anything:
    serve.run's own error only says that the deployment failed."""
    try:
        app = serve.status().applications.get(APP_NAME)
        return "\n".join(d.message for d in app.deployments.values()) if app else ""
    except Exception:  # noqa: BLE001 - only a better message is lost
        return ""


def _cause(exc: BaseException, details: str = "") -> str:
    text = f"{exc}\n{details}"
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    ours = [m[1] for line in lines if (m := re.match(r"asr\.errors\.\w+: (.*)", line))]  # a typed error's message
    return (ours or lines or [type(exc).__name__])[-1]


def cmd_serve_ray(args: argparse.Namespace) -> int:
    try:
        ray, serve = import_serve()
    except MissingRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(args)
    except ASRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    if args.address:
        try:
            ray.init(address=args.address, logging_level="WARNING")
        except (ConnectionError, RuntimeError) as exc:
            print(f"error: cannot join the Ray cluster at {args.address}: {exc}", file=sys.stderr)
            return 2
    started_ray = not ray.is_initialized()
    try:
        shown = deploy(settings, replicas=args.replicas, gpus_per_replica=args.gpus_per_replica,
                       cpus_per_replica=args.cpus_per_replica, max_ongoing_requests=args.max_ongoing_requests)
    except ASRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ray.exceptions.RayError, RuntimeError) as exc:
        # A replica that could not start (a missing model), or Serve's proxy (the port is taken):
        # the cause is the last line of Ray's text (the remote traceback comes before it).
        print(f"error: the service did not start: {_cause(exc, _deployment_message(serve))}", file=sys.stderr)
        return 2
    print(f"serving on http://{shown['host']}:{shown['port']}/ with {shown['replicas']} replica(s) "
          f"({shown['gpus_per_replica']:g} GPU, {shown['cpus_per_replica']:g} CPU each; "
          f"max_ongoing_requests {shown['max_ongoing_requests']}); Ctrl-C stops", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):  # a timed wait: the signal handlers run between the waits
        pass
    # Stopping the command stops the application: its replicas finish their requests and give
    # their job files back. A Ray this command started goes with it.
    serve.delete(APP_NAME)
    if started_ray:
        serve.shutdown()
        ray.shutdown()
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve-ray", help="the HTTP API on Ray Serve: one replica per GPU (one box or a cluster)",
                       description="The HTTP API of webui.py --no-ui as a Ray Serve application: each replica "
                       "its own engine, scheduler and batcher; batch jobs shared through the data directory. "
                       "Needs: pip install \"ray[serve]\"")
    p.add_argument("--config", default=None, help="settings YAML; 'auto' picks configs/<gpu>.yaml")
    p.add_argument("--host", default=None, help="where Serve's proxy listens (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--model", default=None, help="model directory or ModelScope id (on every node)")
    p.add_argument("--data-dir", default=None,
                   help="uploads and the job database, shared by all replicas (on a cluster: a shared filesystem)")
    p.add_argument("--max-batch-size", type=int, default=None, help="engine.max_batch_size per replica")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING ...")
    p.add_argument("--address", help="the Ray cluster to join (ray.init(address=...)); default: a local one")
    p.add_argument("--replicas", type=int, help="service replicas (default: one per GPU, else 1)")
    p.add_argument("--gpus-per-replica", type=float, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-replica", type=float, default=1.0,
                   help="CPUs per replica: torch threads, and decoding processes for the ones beyond the first")
    p.add_argument("--max-ongoing-requests", type=int,
                   help="requests one replica handles at once (default limits.max_queue: the replica's own "
                   "queue limit answers 503 queue_full first)")
    p.set_defaults(func=cmd_serve_ray)

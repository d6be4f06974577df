"""Command line of ``webui.py``: flags -> one settings object -> app -> uvicorn.

Also picks the hardware profile (``configs/<name>.yaml``) from the GPU that CUDA will use, so
``run.sh`` only sets environment variables and passes flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import urllib.request
import webbrowser
from pathlib import Path
from typing import Any

from asr.errors import ASRError, ConfigError
from asr.settings import Settings, load_settings, resolve_config

log = logging.getLogger(__name__)

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Chinese ASR service: web UI and HTTP API on one port.",
    )
    p.add_argument("--config", default=None, help="settings YAML; 'auto' picks configs/<gpu>.yaml")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--model", default=None, help="model directory or ModelScope id")
    p.add_argument("--data-dir", default=None, help="where batch uploads and the job database live")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="most requests merged into one engine call by the scheduler (engine.max_batch_size)",
    )
    p.add_argument(
        "--no-gradio-queue",
        action="store_true",
        help="send single-file UI events directly instead of through Gradio's queue. Gradio never "
        "limits concurrency either way: every request goes to the one batching scheduler",
    )
    p.add_argument("--no-ui", action="store_true", help="serve the HTTP API alone, without the web UI")
    p.add_argument(
        "--http-workers",
        type=int,
        default=None,
        help="HTTP worker processes feeding the one batching process (server.http_workers; "
        "default 1; more than 1 needs --no-ui)",
    )
    p.add_argument(
        "--share", action="store_true", help="open a public gradio.live link (exposes the service!)"
    )
    p.add_argument("--autolaunch", action=argparse.BooleanOptionalAction, default=None, help="open a browser")
    p.add_argument(
        "--enable-xformers",
        action="store_true",
        help="accepted for compatibility: selects the memory-efficient attention backend "
        "(PyTorch SDPA); the xformers package itself is not used by this model",
    )
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING ...")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags override the profile and ASR_* environment variables."""
    engine: dict[str, Any] = {}
    server: dict[str, Any] = {}
    if args.model:
        engine["model"] = args.model
    if args.max_batch_size is not None:
        engine["max_batch_size"] = args.max_batch_size
    if args.enable_xformers:
        engine["attention"] = "sdpa"
    for flag, key in (("host", "host"), ("port", "port"), ("data_dir", "data_dir")):
        value = getattr(args, flag)
        if value is not None:
            server[key] = value
    if args.no_gradio_queue:
        server["gradio_queue"] = False
    if args.no_ui:
        server["ui"] = False
    if args.http_workers is not None:
        server["http_workers"] = args.http_workers
    if args.share:
        server["share"] = True
    if args.autolaunch is not None:
        server["autolaunch"] = args.autolaunch
    overrides: dict[str, Any] = {}
    if engine:
        overrides["engine"] = engine
    if server:
        overrides["server"] = server
    if args.log_level:
        overrides["log_level"] = args.log_level
    return load_settings(resolve_config(args.config), **overrides)


def _when_ready(url: str, action: Any, timeout_s: float = 600.0) -> None:
    """Run ``action`` once /healthz answers (the model is loaded and warmed up)."""

    def wait() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as resp:
                    if resp.status == 200:
                        action()
                        return
            except OSError:
                pass
            time.sleep(0.5)

    threading.Thread(target=wait, daemon=True, name="asr-when-ready").start()


def _open_share_tunnel(host: str, port: int) -> None:
    import secrets

    from gradio import networking

    try:
        url = networking.setup_tunnel(host, port, secrets.token_urlsafe(32), None, None)
    except Exception as exc:  # noqa: BLE001 - a failed tunnel must not stop the local service
        log.error("could not open the public share link: %s", exc)
        return
    log.warning("PUBLIC URL: %s  (anyone with this link can use the service)", url)


def serve(settings: Settings) -> None:
    """Load the model, warm it up, then listen (uvicorn binds only after start-up finished)."""
    import uvicorn

    from asr.runtime import configure_process
    from asr.web.app import create_app
    from asr.web.workers import serve_workers, uvicorn_options

    configure_process(settings)
    server = settings.server
    # Everything the server writes (batch uploads, the job database, Gradio's upload cache, the
    # UI's downloads) is for this user only: folders 0700, files 0600.
    os.umask(0o077)
    check_data_dir(server.data_dir)
    if server.share:
        log.warning("--share exposes this service to the public internet through gradio.live.")
    if server.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines", server.host)
    local = f"http://{'127.0.0.1' if server.host in ('0.0.0.0', '::') else server.host}:{server.port}/"
    if server.share:
        _when_ready(local, lambda: _open_share_tunnel(server.host, server.port))
    if server.autolaunch:
        _when_ready(local, lambda: webbrowser.open(local))
    if server.http_workers > 1:
        serve_workers(settings)  # N HTTP workers, one batching process (asr/web/workers.py)
        return
    app = create_app(settings)
    uvicorn.run(app, host=server.host, port=server.port, **uvicorn_options(settings))


def check_data_dir(path: str | os.PathLike[str]) -> None:
    """The data directory (`server.data_dir`) is a folder this user can write, made if missing:
    checked before the model loads, so a wrong `--data-dir` is one line saying so, not a
    traceback after the model (nor, with HTTP workers, every worker dying at its start)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"The data directory {folder} is a file, not a folder (server.data_dir, --data-dir).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"The data directory {folder} cannot be made (server.data_dir, --data-dir): {exc.strerror or exc}."
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"The data directory {folder} is not writable (server.data_dir, --data-dir).")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_args(args)
        logging.getLogger().setLevel(settings.log_level.upper())
        serve(settings)
    except ASRError as exc:
        # A missing model or a bad setting: the message says what to do; a traceback would
        # only bury it.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

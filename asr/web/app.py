"""The app factory: one FastAPI app (HTTP API + OpenAPI docs) with the Gradio UI mounted at /."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asr.service.core import EngineLike, Service
from asr.service.front import FrontConfig, HubLink, RemoteEngine
from asr.settings import Settings
from asr.web.auth import TokenAuth, redact_access_log
from asr.web.errors import install_error_handlers
from asr.web.gradio_guard import GradioUrlGuard
from asr.web.limits import BodySizeLimit, body_limit_for
from asr.web.routes import health, hotword_sets, jobs, live, openai, transcribe

log = logging.getLogger(__name__)

# Where /docs and /redoc load their scripts and styles from.
DOCS_ASSETS = "/docs-assets"
# The page script ships inside the package (the repository root links to it).
BATCH_SCRIPT = Path(__file__).resolve().parent / "static" / "batch_opt.js"
LIVE_SCRIPT = Path(__file__).resolve().parent / "static" / "live.js"


class RequestMetrics:
    """Counts API requests (route, status, seconds) for /metrics.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` runs every request, and every
    chunk of its body, through task groups, which cost about a sixth of the server's CPU under
    150 concurrent uploads (py-spy on the H100 box).
    """

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router records the matched route in the shared scope. Only our API routes are
            # counted; the UI's own traffic would drown them.
            path = getattr(scope.get("route"), "path", None)
            if path is not None and (path.startswith("/api") or path.startswith("/v1")):
                self.service.metrics.observe_request(path, status, time.perf_counter() - t0)


def _script_route(path: Path) -> Callable[[], Awaitable[FileResponse]]:
    async def script() -> FileResponse:
        return FileResponse(path, media_type="text/javascript")

    return script


def create_app(
    settings: Settings, engine: EngineLike | None = None, *, front: FrontConfig | None = None,
    replica: str | None = None,
) -> FastAPI:  # fmt: skip
    """Build the service from one settings object.

    ``engine`` defaults to ``load_engine(settings.engine)`` (in a process of its own on a GPU); it
    is loaded here, before the server accepts connections, and the lifespan pushes one clip through
    the scheduler (warm-up).

    ``front``: the app is one of several HTTP workers (`server.http_workers`, asr/web/workers.py);
    the scheduler and the engine are in the batching process this config names, which has warmed
    the engine up already.

    ``replica``: the app is one of several Ray Serve replicas (asr/serve_ray.py), each a whole
    service with its own engine and scheduler, sharing the data directory; the id names its claims
    in the shared job store.
    """
    from asr.pipeline.models import EngineNetworks, StageModels

    models = StageModels(settings.longform, settings.engine.model_cache)
    link = HubLink(front) if front is not None else None
    networks = EngineNetworks(settings)
    if link is not None:
        link.use_served_models(models, settings.longform)
    elif engine is None:
        networks.attach(models)  # the engine is loaded below: the networks may run in its process
    models.preload(itn=settings.pipeline.itn, punctuation=True)  # while the engine loads
    owned = engine is None and link is None
    if link is not None:
        engine = RemoteEngine(link)
    elif engine is None:
        from asr.engine.process import load_engine

        engine = load_engine(settings.engine)
        networks.start(engine)
    service = Service(settings, engine, models, front=link, replica=replica)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redact_access_log()  # here: the server has set up its loggers by now
        await service.start(warmup=settings.engine.warmup and link is None)
        log.info("service ready: %s", service.info()["scheduler"])
        try:
            yield
        finally:
            await service.stop()
            if owned:
                engine.close()  # an engine process ends with the service

    # /docs and /redoc with Swagger UI and ReDoc served from this machine (fastapi-offline ships
    # their files): FastAPI's own pages load them from a CDN and are blank offline.
    app = FastAPIOffline(
        title="Chinese ASR service (SeACo-Paraformer)",
        description="Hotword-aware Chinese speech recognition. All requests share one batching scheduler.",
        version="1.0",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
    )
    app.state.service = service
    install_error_handlers(app)

    app.add_middleware(RequestMetrics, service=service)

    if settings.server.ui:
        # Inside the body limit (it reads Gradio's event bodies whole): a file reference that
        # names a URL is refused before Gradio would look the host up and fetch it.
        app.add_middleware(GradioUrlGuard)

    # Outside the request counter, inside the token check: bodies over the limit are refused
    # while they stream in, before any route or Gradio handler reads them.
    app.add_middleware(BodySizeLimit, limit_for=body_limit_for(settings.limits))

    if settings.server.api_token:
        # Added last, so it runs first: nothing is counted or served before the token is checked.
        app.add_middleware(
            TokenAuth, token=settings.server.api_token, session_s=settings.server.session_h * 3600
        )

    for module in (transcribe, jobs, hotword_sets, openai, health):
        app.include_router(module.router)
    if settings.live.enabled:
        # Before the UI is mounted at /: a WebSocket to / is FunASR's live protocol.
        app.include_router(live.router)

    if not settings.server.ui:
        return app  # the HTTP API alone: gradio is not even imported
    import gradio as gr

    from asr.web.ui import UI_CSS, build_ui

    head = ""
    scripts = [BATCH_SCRIPT, *([LIVE_SCRIPT] if settings.live.enabled else [])]
    for script in scripts:
        if not script.is_file():
            continue
        version = int(script.stat().st_mtime)
        app.add_api_route(
            f"/{script.name}", _script_route(script), methods=["GET"], include_in_schema=False,
            response_class=FileResponse,
        )  # fmt: skip
        # Gradio's supported hook for page scripts: `head` HTML is added to the page's <head>.
        head += f'<script src="/{script.name}?v={version}" defer></script>'

    blocks = build_ui(service)
    blocks.queue(default_concurrency_limit=None, max_size=settings.limits.max_queue)
    # Gradio only checks that a file path sent by the client is one it stored itself (its upload
    # folder) once the Blocks "has launched"; mount_gradio_app never sets that, which would let a
    # client make the UI read any file on the server. The flag has no other use in Gradio.
    blocks.has_launched = True
    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        head=head,
        css=UI_CSS,
        ssr_mode=False,
        footer_links=["api"],
        max_file_size=int(settings.limits.max_upload_mb * 1024 * 1024),
    )

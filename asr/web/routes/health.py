"""GET /healthz and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from asr.service.core import Service
from asr.service.metrics import CONTENT_TYPE_LATEST
from asr.web.deps import get_service

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness and readiness")
async def healthz(service: Annotated[Service, Depends(get_service)]) -> Any:
    """Open even when a token is set (load balancers), so it says nothing about the machine:
    no model or data paths (those are in /api/info, behind the token)."""
    ready = service.scheduler.running
    body = {"status": "ok" if ready else "starting", "queue_depth": service.scheduler.queue_depth}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(service: Annotated[Service, Depends(get_service)]) -> Response:
    await service.refresh(metrics=True)  # several HTTP workers: the batching process's registry
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/info", summary="Engine, scheduler and throughput details")
async def info(service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    await service.refresh()
    return service.info()

"""For operators: `GET /health` (no key needed) and `GET /metrics` (Prometheus text format)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pipelines.device import device_warning
from server import __version__

router = APIRouter()


@router.get("/metrics")
async def prometheus_metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    ready = request.app.state.service.ready_models()
    # Off the loop: the first call imports torch to ask about CUDA. None when all is well; else a
    # GPU box whose torch sees no CUDA device, with the fix.
    warning = await asyncio.to_thread(device_warning, request.app.state.settings.device)
    return {"status": "ok", "version": __version__, "models_ready": ready, "device_warning": warning}

"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics``."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...metrics import render_metrics
from ..runtime import Runtime

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Return ok while the process serves HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, Any]:
    """Return ready once the config is loaded, with the Kafka delivery state (reported, not required)."""
    runtime: Runtime = request.app.state.runtime
    pub = runtime.publisher
    kafka = None if pub is None else {
        "connected": pub.connected, "queued": pub.queued, "spooled": pub.spooled,
        "dropped": pub.dropped, "last_error": pub.last_error}
    return {"status": "ready", "experiments": len(runtime.config.experiments), "kafka": kafka,
            "worker": int(os.environ.get("SPLITWATCH_WORKER_INDEX", "0")), "pid": os.getpid()}


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    """Return all Prometheus metrics in the text exposition format."""
    body, ctype = render_metrics()
    return Response(body, media_type=ctype)

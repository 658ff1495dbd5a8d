"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics``."""

from __future__ import annotations

import os

import orjson
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
async def readyz(request: Request) -> Response:
    """Return 200 once the config is loaded and event delivery runs, with the Kafka delivery state.

    Kafka being unreachable does not fail readiness (events are spooled); a stalled delivery path
    (writer thread or shipper process not running) does: 503 ``delivery_stalled``. ``control`` says
    where the experiment state in force comes from: ``topic`` (read to its end), ``cache`` (Kafka
    unreachable since start: the last state this replica saw), ``config`` (neither) or ``file``.
    """
    runtime: Runtime = request.app.state.runtime
    pub = runtime.publisher
    kafka = None if pub is None else {
        "connected": pub.connected, "queued": pub.queued, "spooled": pub.spooled,
        "dropped": pub.dropped, "dead_lettered": pub.dead_lettered, "last_error": pub.last_error,
        "delivery": "ok" if pub.healthy else "stalled"}
    ready = pub is None or pub.healthy
    body = {"status": "ready" if ready else "delivery_stalled", "experiments": len(runtime.config.experiments),
            "kafka": kafka, "control": runtime.control.status(),
            "worker": int(os.environ.get("SPLITWATCH_WORKER_INDEX", "0")), "pid": os.getpid()}
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    """Return all Prometheus metrics in the text exposition format."""
    body, ctype = render_metrics()
    return Response(body, media_type=ctype)

"""``GET /v1/assignments/{unit_id}``: a unit's arm in every experiment."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..request_body import check_identifier
from ..runtime import Runtime

router = APIRouter()


@router.get("/v1/assignments/{unit_id}")
async def get_assignments(unit_id: str, request: Request) -> dict[str, Any]:
    """Return the unit's assignment (arm, bucket, whether it counts) in each configured experiment."""
    runtime: Runtime = request.app.state.runtime
    check_identifier(unit_id, "unit_id", runtime.config.proxy.max_id_bytes)
    out = []
    for exp in runtime.snapshot.table.by_key.values():
        a = runtime.assign(exp, unit_id)
        out.append({"experiment": a.experiment, "phase": a.phase, "arm": a.arm, "bucket": a.bucket,
                    "in_experiment": a.in_experiment, "excluded_reason": a.excluded_reason, "holdout": a.holdout})
    return {"unit_id": unit_id, "assignments": out}

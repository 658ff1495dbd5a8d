"""``GET|PUT /admin/experiments[/{key}]``: read, pause, resume, change coverage.

Guarded by the bearer token in ``SPLITWATCH_ADMIN_TOKEN`` (compared in constant
time); without that variable the admin API answers 403.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..assignment import CompiledExperiment
from ..errors import AdminDisabled, InvalidRequest, NotFound, Unauthorized
from ..openapi import inline_schema, request_body
from ..request_body import check_identifier, parse_json_object, read_limited_body
from ..runtime import Runtime

log = logging.getLogger(__name__)
ADMIN_TOKEN_ENV = "SPLITWATCH_ADMIN_TOKEN"


def require_admin(request: Request) -> None:
    """Dependency: raise 403 when admin is disabled, 401 when the bearer token is missing or wrong."""
    expected = os.environ.get(ADMIN_TOKEN_ENV)
    if not expected:
        raise AdminDisabled(f"the admin API is disabled: set {ADMIN_TOKEN_ENV} to enable it")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("missing or invalid admin bearer token")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


class ExperimentChange(BaseModel):
    """The body of ``PUT /admin/experiments/{key}``. Strict: ``"0.5"`` is not a coverage."""

    model_config = ConfigDict(extra="forbid", strict=True)
    status: Literal["running", "paused"] | None = None
    coverage: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


CHANGE_REQUEST = request_body(inline_schema(ExperimentChange))


def _describe(runtime: Runtime, exp: CompiledExperiment) -> dict[str, Any]:
    cfg = exp.config
    o = runtime.overrides.get(cfg.key, cfg.phase)
    return {
        "key": cfg.key, "model": cfg.model, "phase": cfg.phase,
        "status": (o.status if o and o.status else cfg.status),
        "coverage": (o.coverage if o and o.coverage is not None else cfg.coverage),
        "configured": {"status": cfg.status, "coverage": cfg.coverage},
        "override": None if o is None else {"status": o.status, "coverage": o.coverage,
                                            "updated_at": o.updated_at},
        "arms": [{"name": r.name, "weight": a.weight, "buckets": [r.start, r.end],
                  "upstream_model": a.upstream.model} for r, a in zip(exp.ranges, cfg.arms, strict=True)],
        "metrics": [m.model_dump() for m in cfg.metrics],
    }


def _experiment(runtime: Runtime, key: str) -> CompiledExperiment:
    check_identifier(key, "key", runtime.config.proxy.max_id_bytes)
    exp = runtime.snapshot.table.by_key.get(key)
    if exp is None:
        raise NotFound(f"no experiment {key!r}", param="key", code="experiment_not_found")
    return exp


@router.get("/experiments")
async def list_experiments(request: Request) -> dict[str, Any]:
    """Return every experiment with its effective status and coverage."""
    runtime: Runtime = request.app.state.runtime
    runtime.overrides.refresh()
    return {"experiments": [_describe(runtime, e) for e in runtime.snapshot.table.by_key.values()]}


@router.get("/experiments/{key}")
async def get_experiment(key: str, request: Request) -> dict[str, Any]:
    """Return one experiment with its effective status and coverage."""
    runtime: Runtime = request.app.state.runtime
    runtime.overrides.refresh()
    return _describe(runtime, _experiment(runtime, key))


@router.put("/experiments/{key}", openapi_extra=CHANGE_REQUEST)
async def change_experiment(key: str, request: Request) -> dict[str, Any]:
    """Pause, resume or change the coverage of an experiment; return its new state."""
    runtime: Runtime = request.app.state.runtime
    exp = _experiment(runtime, key)
    limits = runtime.config.proxy
    body = parse_json_object(request, await read_limited_body(request, 64 * 1024, limits.body_timeout_s),
                             limits.max_json_depth)
    try:
        change = ExperimentChange.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidRequest(f"{field}: {err['msg']}", param=field, code="invalid_change") from None
    if change.status is None and change.coverage is None:
        raise InvalidRequest("give 'status' and/or 'coverage'", code="invalid_change")
    o = runtime.overrides.set(key, exp.config.phase, change.status, change.coverage)
    log.warning("admin: experiment %s phase %d set to status=%s coverage=%s", key, exp.config.phase,
                o.status, o.coverage)
    return _describe(runtime, exp)

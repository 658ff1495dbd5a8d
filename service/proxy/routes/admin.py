"""``GET|PUT /admin/experiments[/{key}]``: read, pause, resume, change coverage, switch shadow traffic.

Guarded by the bearer token in ``SPLITWATCH_ADMIN_TOKEN`` (compared in constant
time); without that variable the admin API answers 403.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...control.channel import ControlUnavailable, wait_applied
from ..assignment import CompiledExperiment
from ..errors import AdminDisabled, Conflict, InvalidRequest, NotFound, ServiceUnavailable, Unauthorized
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
    shadow: bool | None = None  # switch the experiment's configured shadow traffic off (false) or on again (true)
    reason: str | None = Field(None, min_length=1, max_length=500)  # recorded with the change
    by: str | None = Field(None, min_length=1, max_length=128)  # who made it (recorded, not checked)


CHANGE_REQUEST = request_body(inline_schema(ExperimentChange))
APPLY_TIMEOUT_S = 5.0


def _describe(runtime: Runtime, exp: CompiledExperiment) -> dict[str, Any]:
    cfg = exp.config
    st = runtime.control.table.effective(cfg)
    return {
        "key": cfg.key, "model": cfg.model, "phase": cfg.phase, "status": st.status, "coverage": st.coverage,
        "configured": {"status": cfg.status, "coverage": cfg.initial_coverage},
        "last_change": None if st.revision == 0 else {
            "action": st.action, "actor": st.actor, "by": st.changed_by, "reason": st.reason,
            "at": st.ts.isoformat().replace("+00:00", "Z"), "revision": st.revision, "evidence": st.evidence},
        "rollout": None if cfg.rollout is None else cfg.rollout.model_dump(),
        "shadow": None if cfg.shadow is None else {**cfg.shadow.model_dump(), "enabled": st.shadow_enabled(cfg)},
        "arms": [{"name": r.name, "weight": a.weight, "buckets": [r.start, r.end],
                  "upstream_model": a.upstream.model} for r, a in zip(exp.ranges, cfg.arms, strict=True)],
        "metrics": [m.model_dump() for m in cfg.metrics],
        "control": runtime.control.status(),
    }


def _experiment(runtime: Runtime, key: str) -> CompiledExperiment:
    check_identifier(key, "key", runtime.config.proxy.max_id_bytes)
    exp = runtime.snapshot.table.by_key.get(key)
    if exp is None:
        raise NotFound(f"no experiment {key!r}", param="key", code="experiment_not_found")
    return exp


@router.get("/experiments")
async def list_experiments(request: Request) -> dict[str, Any]:
    """Return every experiment with its status and coverage in force and its last change."""
    runtime: Runtime = request.app.state.runtime
    return {"experiments": [_describe(runtime, e) for e in runtime.snapshot.table.by_key.values()]}


@router.get("/experiments/{key}")
async def get_experiment(key: str, request: Request) -> dict[str, Any]:
    """Return one experiment with its status and coverage in force and its last change."""
    runtime: Runtime = request.app.state.runtime
    return _describe(runtime, _experiment(runtime, key))


@router.put("/experiments/{key}", openapi_extra=CHANGE_REQUEST)
async def change_experiment(key: str, request: Request) -> Response:
    """Pause, resume or change the coverage of an experiment on every replica; return its new state.

    The change is written to the control topic (docs/rollout.md) and answered once this worker has
    read it back: 200 when applied, 409 when a newer change won, 503 when the control topic is
    unreachable (nothing changed, or the change's fate is unknown: GET tells).
    """
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
    if change.status is None and change.coverage is None and change.shadow is None:
        raise InvalidRequest("give 'status', 'coverage' and/or 'shadow'", code="invalid_change")
    if change.shadow is not None and exp.config.shadow is None:
        raise InvalidRequest(f"experiment {key!r} has no shadow block in its config: nothing to switch",
                             param="shadow", code="invalid_change")
    if change.by is not None:
        check_identifier(change.by, "by", limits.max_id_bytes)
    state = runtime.control.table.change(
        exp.config, actor="admin", status=change.status, coverage=change.coverage, changed_by=change.by,
        reason=change.reason or "changed through the admin API", shadow=change.shadow)
    try:
        await asyncio.to_thread(runtime.control.publish, state)
    except ControlUnavailable as exc:
        log.error("admin: %s %s not published: %s", key, state.action, exc)
        raise ServiceUnavailable(f"{exc}. The experiment's state may be unchanged: GET it to check.",
                                 code="control_unavailable") from None
    applied = await asyncio.to_thread(wait_applied, runtime.control, state, APPLY_TIMEOUT_S)
    if runtime.publisher is not None:
        runtime.publisher.publish(state.to_event())
    log.warning("admin: experiment %s phase %d %s: status=%s coverage=%s by %s: %s [revision %d]", key,
                exp.config.phase, state.action, state.status, state.coverage, state.changed_by or "admin API",
                state.reason, state.revision)
    if applied is not None and applied.change_id != state.change_id:
        raise Conflict(f"a newer change of {key} (revision {applied.revision}, {applied.action} by "
                       f"{applied.actor}) was made concurrently and is in force; re-read and retry",
                       code="concurrent_change")
    out = _describe(runtime, exp)
    out["applied"] = applied is not None
    return JSONResponse(out, status_code=200 if applied is not None else 202)

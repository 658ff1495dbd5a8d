"""``POST /v1/outcomes``: business outcomes (resolved, escalated, CSAT, ...) reported by the client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from ... import metrics
from ...events import OutcomeEvent, new_event_id
from ..errors import InvalidRequest, NotFound
from ..request_body import parse_json, read_limited_body
from ..runtime import Runtime

router = APIRouter()


class OutcomeIn(BaseModel):
    """One outcome as the client posts it."""

    model_config = ConfigDict(extra="forbid")

    experiment: str = Field(min_length=1)
    unit_id: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    value: Annotated[float, Field(allow_inf_nan=False)]
    request_id: str | None = None
    ts: datetime | None = None
    event_id: str | None = Field(None, min_length=1, max_length=128)


def _validate(items: list[Any], runtime: Runtime) -> list[OutcomeEvent]:
    """Return the outcome events for posted items; raise a 4xx error naming the first bad field."""
    events = []
    for i, item in enumerate(items):
        where = f"[{i}]" if len(items) > 1 else ""
        try:
            o = OutcomeIn.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise InvalidRequest(f"outcome{where}.{field}: {err['msg']}", param=f"{where}{field}".lstrip(".") or None,
                                 code="invalid_outcome") from None
        exp = runtime.snapshot.table.by_key.get(o.experiment)
        if exp is None:
            raise NotFound(f"outcome{where}: unknown experiment {o.experiment!r}", param="experiment",
                           code="experiment_not_found")
        mdef = exp.config.metric(o.metric)
        allowed = exp.config.outcome_names
        if exp.config.metrics and o.metric not in allowed:
            raise InvalidRequest(f"outcome{where}: experiment {o.experiment!r} has no metric {o.metric!r}; "
                                 f"metrics: {sorted(allowed)}", param="metric", code="unknown_metric")
        if mdef is not None and mdef.kind == "binary" and o.value not in (0.0, 1.0):
            raise InvalidRequest(f"outcome{where}: metric {o.metric!r} is binary, value must be 0 or 1",
                                 param="value", code="invalid_outcome")
        ts = o.ts if o.ts is not None else datetime.now(UTC)
        if ts.tzinfo is None:
            raise InvalidRequest(f"outcome{where}.ts: give a timezone (RFC 3339, e.g. 2026-01-01T12:00:00Z)",
                                 param="ts", code="invalid_outcome")
        _, arm_range = exp.bucketed_arm(o.unit_id)
        events.append(OutcomeEvent(
            event_id=o.event_id or new_event_id(), ts=ts.astimezone(UTC), experiment=o.experiment,
            phase=exp.config.phase, arm=arm_range.name, unit_id=o.unit_id, request_id=o.request_id,
            metric=o.metric, value=o.value))
    return events


@router.post("/v1/outcomes", status_code=202)
async def post_outcomes(request: Request) -> Response:
    """Accept one outcome or a list; return 202 with the event ids, or a 4xx naming the bad field.

    All items are validated before any is logged: a batch is accepted whole or not at all.
    """
    runtime: Runtime = request.app.state.runtime
    raw = await read_limited_body(request, runtime.config.proxy.max_body_bytes)
    body = parse_json(request, raw)
    items = body if isinstance(body, list) else [body]
    if not all(isinstance(i, dict) for i in items):
        raise InvalidRequest("the body must be an outcome object or a list of them", code="invalid_outcome")
    if not items:
        raise InvalidRequest("no outcomes given", code="invalid_outcome")
    limit = runtime.config.proxy.max_outcomes_per_request
    if len(items) > limit:
        raise InvalidRequest(f"{len(items)} outcomes in one request; the limit is {limit}",
                             code="too_many_outcomes")
    events = _validate(items, runtime)
    for ev in events:
        if runtime.publisher is not None:
            runtime.publisher.publish(ev)
        metrics.OUTCOMES.labels(ev.experiment, ev.metric).inc()
    return Response(orjson.dumps({"accepted": len(events), "event_ids": [e.event_id for e in events]}),
                    status_code=202, media_type="application/json")


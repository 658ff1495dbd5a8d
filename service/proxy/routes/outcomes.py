"""``POST /v1/outcomes``: business outcomes (resolved, escalated, CSAT, ...) reported by the client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.responses import Response

from ... import metrics
from ...events import OutcomeEvent, new_event_id
from ..errors import InvalidRequest, NotFound
from ..openapi import inline_schema, request_body
from ..request_body import check_identifier, parse_json, read_limited_body
from ..runtime import Runtime

router = APIRouter()

EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(days=1)  # clock skew tolerated on a client-supplied ts
IDENTIFIERS = ("experiment", "unit_id", "metric", "request_id", "event_id")


class OutcomeIn(BaseModel):
    """One outcome as the client posts it. Types are strict: ``"4"`` or ``true`` is not a number.

    The JSON schema of this model is the request schema of ``POST /v1/outcomes`` in the OpenAPI
    document (one outcome or a list of them).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    experiment: str | None = Field(None, min_length=1, description=(
        "the experiment key; omitted: the unit's history outside any experiment (say with a past ts), "
        "read as its pre-period value by the variance reduction (CUPED)"))
    unit_id: str = Field(min_length=1, description="the experiment unit (the `user` of the requests)")
    metric: str = Field(min_length=1, description="a metric the experiment defines")
    value: Annotated[float, Field(allow_inf_nan=False, description="0 or 1 for binary metrics")]
    request_id: str | None = Field(None, min_length=1, description="X-Splitwatch-Request-Id of one answer")
    ts: datetime | None = Field(None, description="RFC 3339 with a timezone; default: now", strict=False)
    event_id: str | None = Field(None, min_length=1, max_length=128,
                                 description="a client-chosen id that makes retries idempotent")

    @field_validator("ts", mode="before")
    @classmethod
    def _ts_is_text(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError("must be an RFC 3339 timestamp string")
        return v


def _outcome_time(o: OutcomeIn, where: str) -> datetime:
    """Return the outcome's time in UTC (now when not given); raise InvalidRequest when it cannot be one."""
    if o.ts is None:
        return datetime.now(UTC)
    if o.ts.tzinfo is None:
        raise InvalidRequest(f"outcome{where}.ts: give a timezone (RFC 3339, e.g. 2026-01-01T12:00:00Z)",
                             param="ts", code="invalid_outcome")
    try:
        ts = o.ts.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        ts = None
    if ts is None or ts < EARLIEST_TS or ts > datetime.now(UTC) + MAX_FUTURE:
        raise InvalidRequest(f"outcome{where}.ts: {o.ts.isoformat()} is out of range (from 2000-01-01 to one day "
                             f"from now)", param="ts", code="invalid_outcome")
    return ts


def _validate(items: list[Any], runtime: Runtime) -> list[OutcomeEvent]:
    """Return the outcome events for posted items; raise a 4xx error naming the first bad field."""
    max_id_bytes = runtime.config.proxy.max_id_bytes
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
        for name in IDENTIFIERS:
            value = getattr(o, name)
            if value is not None:
                check_identifier(value, f"{where}{name}".lstrip("."), max_id_bytes)
        ts = _outcome_time(o, where)
        if o.experiment is None:
            events.append(_history_outcome(o, ts, where, runtime))
            continue
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
        _, arm_range = exp.bucketed_arm(o.unit_id)
        events.append(OutcomeEvent(
            event_id=o.event_id or new_event_id(), ts=ts, experiment=o.experiment,
            phase=exp.config.phase, arm=arm_range.name, unit_id=o.unit_id, request_id=o.request_id,
            metric=o.metric, value=o.value))
    return events


def _history_outcome(o: OutcomeIn, ts: datetime, where: str, runtime: Runtime) -> OutcomeEvent:
    """Return the event of an outcome posted without an experiment: a metric some experiment defines."""
    defined = [e.config for e in runtime.snapshot.table.by_key.values() if o.metric in e.config.outcome_names]
    if not defined:
        known = sorted({n for e in runtime.snapshot.table.by_key.values() for n in e.config.outcome_names})
        raise InvalidRequest(f"outcome{where}: no experiment has a metric {o.metric!r}; metrics: {known}",
                             param="metric", code="unknown_metric")
    binary = any((m := c.metric(o.metric)) is not None and m.kind == "binary" for c in defined)
    if binary and o.value not in (0.0, 1.0):
        raise InvalidRequest(f"outcome{where}: metric {o.metric!r} is binary, value must be 0 or 1",
                             param="value", code="invalid_outcome")
    return OutcomeEvent(event_id=o.event_id or new_event_id(), ts=ts, experiment=None, phase=None, arm=None,
                        unit_id=o.unit_id, request_id=o.request_id, metric=o.metric, value=o.value)


# The request schema in the OpenAPI document (clients, fuzzers). The handler reads the raw body
# itself (one parse, batch semantics, errors naming the item), so declaring it costs nothing per request.
_OUTCOME_SCHEMA = inline_schema(OutcomeIn)
OPENAPI = {**request_body({"anyOf": [_OUTCOME_SCHEMA, {"type": "array", "items": _OUTCOME_SCHEMA, "minItems": 1}]}),
           "responses": {"202": {"description": "accepted: {\"accepted\": N, \"event_ids\": [...]}"}}}


@router.post("/v1/outcomes", status_code=202, openapi_extra=OPENAPI)
async def post_outcomes(request: Request) -> Response:
    """Accept one outcome or a list; return 202 with the event ids, or a 4xx naming the bad field.

    All items are validated before any is logged: a batch is accepted whole or not at all.
    """
    runtime: Runtime = request.app.state.runtime
    proxy = runtime.config.proxy
    raw = await read_limited_body(request, proxy.max_body_bytes, proxy.body_timeout_s)
    body = parse_json(request, raw, proxy.max_json_depth)
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
        metrics.OUTCOMES.labels(ev.experiment or "", ev.metric).inc()
    return Response(orjson.dumps({"accepted": len(events), "event_ids": [e.event_id for e in events]}),
                    status_code=202, media_type="application/json")


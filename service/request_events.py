"""The proxy's two events per request (exposure, response), built without pydantic.

:class:`~.events.ExposureEvent` and :class:`~.events.ResponseEvent` are the schema (docs/events.md):
consumers parse with them and tests build with them. The request path builds the same JSON here,
field for field and byte for byte (tests/test_request_events.py compares the two for every field's
cases), from values it has already checked: validating them again cost about 75 us of a request's
in-process time at concurrency 1 (two models, their defaults and ``to_json``'s exclusions;
docs/benchmarks.md, issue 32). The JSON is written by orjson in the event writer thread; a value orjson
refuses (an integer past 64 bits from an upstream's usage) falls back to the pydantic model, so the
event is serialised as before or set aside by the publisher exactly as before.
"""

from __future__ import annotations

from typing import Any

import orjson

from .events import SCHEMA_VERSION, ExposureEvent, ResponseEvent, new_uuid4, now_utc


class RequestEvent:
    """An event of the request path: its JSON fields in the schema's order, and the publisher's interface
    (``type``, :meth:`key`, :meth:`to_json`, ``text_sample``)."""

    __slots__ = ("fields", "text_sample", "type")

    def __init__(self, event_type: str, fields: dict[str, Any], text_sample: bytes) -> None:
        self.type = event_type
        self.fields = fields
        self.text_sample = text_sample

    def key(self) -> bytes:
        """Return the Kafka message key: the unit id (request id when there is no unit)."""
        f = self.fields
        return (f["unit_id"] or f["request_id"] or f["event_id"]).encode()

    def to_json(self) -> bytes:
        """Return the event's JSON, as the schema's model writes it (``ts`` in RFC 3339 UTC)."""
        try:
            return orjson.dumps(self.fields, option=orjson.OPT_UTC_Z)
        except orjson.JSONEncodeError:
            return self.model().to_json()

    def model(self) -> ExposureEvent | ResponseEvent:
        """Return the event as its validated schema model (tests, and values orjson cannot write)."""
        cls = ExposureEvent if self.type == "exposure" else ResponseEvent
        return cls.model_validate(self.fields)


def exposure_event(experiment: str, phase: int, arm: str | None, unit_id: str | None, request_id: str,
                   requested_model: str, upstream_model: str, forced: bool, holdout: bool,
                   features: dict[str, float | str], attributes: dict[str, str] | None, text: str | None,
                   text_sample: bytes) -> RequestEvent:
    """Return the exposure event of one request (``ExposureEvent``'s JSON: ``holdout`` only when true,
    ``attributes`` and ``text`` only when set)."""
    fields: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "event_id": new_uuid4(), "ts": now_utc(), "experiment": experiment,
        "phase": phase, "arm": arm, "unit_id": unit_id, "request_id": request_id, "type": "exposure",
        "requested_model": requested_model, "upstream_model": upstream_model, "forced": forced}
    if holdout:
        fields["holdout"] = True
    fields["features"] = features
    if attributes is not None:
        fields["attributes"] = attributes
    if text is not None:
        fields["text"] = text
    return RequestEvent("exposure", fields, text_sample)


def response_event(experiment: str, phase: int, arm: str | None, unit_id: str | None, request_id: str,
                   status_code: int, latency_ms: float, ttft_ms: float | None, prompt_tokens: int | None,
                   completion_tokens: int | None, error: str | None, stream: bool, forced: bool,
                   text: str | None, finish_reason: str | None, text_sample: bytes) -> RequestEvent:
    """Return the response event of one request (``ResponseEvent``'s JSON: ``text`` only when set;
    ``answer`` is the event shipper's to fill)."""
    fields: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "event_id": new_uuid4(), "ts": now_utc(), "experiment": experiment,
        "phase": phase, "arm": arm, "unit_id": unit_id, "request_id": request_id, "type": "response",
        "status_code": status_code, "latency_ms": latency_ms, "ttft_ms": ttft_ms, "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens, "error": error, "stream": stream, "forced": forced}
    if text is not None:
        fields["text"] = text
    fields["finish_reason"] = finish_reason
    fields["answer"] = None
    return RequestEvent("response", fields, text_sample)

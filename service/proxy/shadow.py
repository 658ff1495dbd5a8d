"""Shadow traffic: a share of the control arm's requests also goes to a candidate arm, in the background.

The client's path does not wait for anything here: :func:`maybe_mirror` decides (share, concurrency
cap, rate budget) and starts a task; the task calls the candidate with the same body (its own model
name), streaming if the client streamed, bounded by the candidate's ``timeout_s``, and never raises.
When both the control's call (through :meth:`ShadowPair.control_done`, from the request's own
``finish``) and the candidate's have ended, the pair becomes one ``shadow`` event. Its comparison
scores are computed by the event shipper from the two answers' samples, off the event loop.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from .. import metrics
from ..config import ArmConfig, ShadowConfig
from ..events import TEXT_KIND_ANSWER, TEXT_KIND_STREAM, ShadowEvent, ShadowSide, pair_sample
from ..features.answer import (
    ANSWER_SAMPLE_CHARS,
    STREAM_SAMPLE_BYTES,
    completion_content,
    finish_reason_of,
    stream_content,
)
from .assignment import Assignment
from .tracing import RequestSpan
from .upstream import SSEUsageScanner, build_request, status_error_kind, usage_of


@dataclass
class SideResult:
    """How one call of a pair ended, and the start of its answer (kind byte + text or SSE bytes)."""

    side: ShadowSide
    sample: bytes = b""
    text: str | None = None


class ShadowGate:
    """One worker's shadow budget per experiment: calls in flight, and a token bucket for the rate."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self._tokens: dict[str, tuple[float, float]] = {}  # experiment -> (tokens, at)
        self.tasks: set[asyncio.Task[None]] = set()

    def admit(self, experiment: str, cfg: ShadowConfig) -> str | None:
        """Return None when a shadow call may start now (and count it), else the reason it may not."""
        if self.in_flight.get(experiment, 0) >= cfg.max_concurrency:
            return "concurrency"
        if cfg.max_per_second is not None:
            now = time.monotonic()
            tokens, at = self._tokens.get(experiment, (cfg.max_per_second, now))
            tokens = min(cfg.max_per_second, tokens + (now - at) * cfg.max_per_second)
            if tokens < 1:
                self._tokens[experiment] = (tokens, now)
                return "rate"
            self._tokens[experiment] = (tokens - 1, now)
        self.in_flight[experiment] = self.in_flight.get(experiment, 0) + 1
        metrics.SHADOW_IN_FLIGHT.inc()
        return None

    def done(self, experiment: str) -> None:
        """Count a shadow call as ended."""
        self.in_flight[experiment] -= 1
        metrics.SHADOW_IN_FLIGHT.dec()


class ShadowPair:
    """The two calls of a mirrored request; publishes the ``shadow`` event once both have ended."""

    def __init__(self, publish: Any, assignment: Assignment, candidate: str, unit_id: str | None, request_id: str,
                 stream: bool, json_requested: bool, log_text: bool) -> None:
        self.publish = publish
        self.assignment = assignment
        self.candidate = candidate
        self.unit_id = unit_id
        self.request_id = request_id
        self.stream = stream
        self.json_requested = json_requested
        self.log_text = log_text
        self.control: SideResult | None = None
        self.shadow: SideResult | None = None

    def control_done(self, result: SideResult) -> None:
        """Record the control's call (from the request's ``finish``)."""
        self.control = result
        self._maybe_publish()

    def shadow_done(self, result: SideResult) -> None:
        """Record the candidate's call."""
        self.shadow = result
        self._maybe_publish()

    def _maybe_publish(self) -> None:
        if self.control is None or self.shadow is None:
            return
        a = self.assignment
        control_failed = self.control.side.error not in (None, "client_disconnected")  # the client left: not a failure
        metrics.SHADOW_PAIRS.labels(a.experiment, self.candidate, "error" if control_failed else "ok",
                                    "ok" if self.shadow.side.error is None else "error").inc()
        if self.publish is None:
            return
        event = ShadowEvent(
            experiment=a.experiment, phase=a.phase, arm=a.arm, unit_id=self.unit_id, request_id=self.request_id,
            candidate=self.candidate, stream=self.stream, json_requested=self.json_requested,
            control=self.control.side, shadow=self.shadow.side,
            text=self.control.text if self.log_text else None,
            shadow_text=self.shadow.text if self.log_text else None)
        event.attach_text_sample(pair_sample(self.control.sample, self.shadow.sample))
        self.publish(event)


def json_requested(body: dict[str, Any]) -> bool:
    """Return True when the request asked for a JSON answer (``response_format`` json_object or json_schema)."""
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def maybe_mirror(runtime: Any, cfg: ShadowConfig, candidate: ArmConfig, a: Assignment, body: dict[str, Any],
                 path: str, unit_id: str | None, request_id: str, stream: bool, log_text: bool,
                 span: RequestSpan | None = None, kind: str = "chat") -> ShadowPair | None:
    """Start the shadow call of this control request when it is drawn and within budget; return its pair.

    ``body`` is the client's request as sent to the control (its ``model`` is replaced by the
    candidate's). ``span``: the request's span, to which the shadow call's own span is linked.
    Returns None when the request is not mirrored.
    """
    if random.random() >= cfg.share:
        return None
    gate: ShadowGate = runtime.shadow_gate
    refused = gate.admit(a.experiment, cfg)
    if refused is not None:
        metrics.SHADOW_SKIPPED.labels(a.experiment, refused).inc()
        return None
    pair = ShadowPair(None if runtime.publisher is None else runtime.publisher.publish, a, candidate.name, unit_id,
                      request_id, stream, json_requested(body), log_text)
    payload = orjson.dumps({**body, "model": candidate.upstream.model})
    shadow_span = None
    if span is not None and runtime.tracing is not None:
        shadow_span = runtime.tracing.start_shadow(span, kind, candidate.upstream.model, candidate.upstream.base_url,
                                                   a.experiment, candidate.name, request_id, stream)
    task = asyncio.get_running_loop().create_task(
        _run(runtime, gate, a.experiment, candidate, path, payload, request_id, stream, pair, shadow_span))
    gate.tasks.add(task)
    task.add_done_callback(gate.tasks.discard)
    return pair


async def _run(runtime: Any, gate: ShadowGate, experiment: str, candidate: ArmConfig, path: str, payload: bytes,
               request_id: str, stream: bool, pair: ShadowPair, span: RequestSpan | None = None) -> None:
    try:
        result = await call_candidate(runtime.clients, candidate, path, payload, request_id, stream,
                                      None if span is None else span.upstream_headers())
    except Exception as exc:
        result = SideResult(ShadowSide(status_code=None, latency_ms=0.0, error=f"internal:{type(exc).__name__}"))
    finally:
        gate.done(experiment)
    if span is not None:
        side = result.side
        span.end(side.status_code, side.prompt_tokens, side.completion_tokens, side.finish_reason, side.error)
    metrics.SHADOW_CALLS.labels(experiment, candidate.name, "ok" if result.side.error is None else "error").inc()
    pair.shadow_done(result)


def _failed(error: str, started: float) -> SideResult:
    return SideResult(ShadowSide(status_code=None, latency_ms=round((time.perf_counter() - started) * 1000, 3),
                                 error=error))


async def call_candidate(clients: Any, arm: ArmConfig, path: str, payload: bytes, request_id: str,
                         stream: bool, trace: dict[str, str] | None = None) -> SideResult:
    """Return how the candidate's call ended: status, latency, TTFT (streams), tokens, error, answer sample.

    Bounded as a whole by the candidate's ``timeout_s``; a timeout or a connection failure is a
    result (``error``), not an exception.
    """
    up = arm.upstream
    transport, release = clients.lease(up)
    started = time.perf_counter()
    ttft = None
    try:
        async with asyncio.timeout(up.timeout_s):
            resp = await transport.handle_async_request(build_request(up, path, payload, f"shadow-{request_id}", trace))
            try:
                if not stream or resp.status_code >= 400:
                    body = await resp.aread()
                else:
                    scanner = SSEUsageScanner()
                    head = bytearray()
                    async for chunk in resp.aiter_raw():
                        if ttft is None:
                            ttft = time.perf_counter() - started
                        scanner.feed(chunk)
                        if len(head) < STREAM_SAMPLE_BYTES:
                            head += chunk[:STREAM_SAMPLE_BYTES - len(head)]
                    body = bytes(head)
            finally:
                await resp.aclose()
    except TimeoutError:
        return _failed("timeout", started)
    except httpx.ConnectError:
        return _failed("connect_error", started)
    except httpx.HTTPError:
        return _failed("protocol_error", started)
    finally:
        release()
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    status = resp.status_code
    if status >= 400:
        return SideResult(ShadowSide(status_code=status, latency_ms=latency_ms, error=status_error_kind(status)))
    if stream:
        text = stream_content(body)[0]
        side = ShadowSide(status_code=status, latency_ms=latency_ms,
                          ttft_ms=None if ttft is None else round(ttft * 1000, 3),
                          prompt_tokens=scanner.prompt_tokens, completion_tokens=scanner.completion_tokens,
                          finish_reason=scanner.finish_reason())
        return SideResult(side, TEXT_KIND_STREAM + body, text)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return SideResult(ShadowSide(status_code=status, latency_ms=latency_ms, error="invalid_json"))
    text = completion_content(parsed)[0] or ""
    ptok, ctok = usage_of(parsed)
    side = ShadowSide(status_code=status, latency_ms=latency_ms, prompt_tokens=ptok, completion_tokens=ctok,
                      finish_reason=finish_reason_of(parsed))
    return SideResult(side, TEXT_KIND_ANSWER + text[:ANSWER_SAMPLE_CHARS].encode("utf-8", "replace"), text)

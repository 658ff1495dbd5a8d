"""``POST /v1/chat/completions`` and ``POST /v1/completions``: assign, forward, log.

request → validation → assignment → exposure event → upstream (streaming or not)
→ response event and metrics. The upstream's status, body and stream pass through
unchanged apart from ``model``; errors the proxy itself answers use OpenAI bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio
import httpx
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from ... import metrics
from ...config import UNASSIGNED_ARM, ArmConfig, Config, ExperimentConfig, ProxyConfig, UpstreamConfig
from ...events import TEXT_KIND_ANSWER, TEXT_KIND_PROMPT, ShadowSide, new_uuid4
from ...features.answer import ANSWER_SAMPLE_CHARS, completion_content, finish_reason_of
from ...features.prompt import features_of_prompt, prompt_text
from ...features.text import TEXT_SAMPLE_CHARS
from ...request_events import exposure_event, response_event
from ..arm_series import arm_series
from ..assignment import Assignment
from ..errors import InvalidRequest, ModelNotFound, Overloaded, UpstreamError, WorkerOverloaded, error_body
from ..openapi import CHAT_REQUEST, COMPLETION_REQUEST
from ..raw_response import RawResponse
from ..request_body import check_identifier, parse_json_object, read_limited_body
from ..runtime import Runtime
from ..shadow import ShadowPair, SideResult, maybe_mirror
from ..stream_relay import StreamEnd, StreamRelay
from ..tracing import RequestSpan, captures_text
from ..upstream import (
    ClientDisconnected,
    build_request,
    call_until_disconnect,
    is_openai_error,
    status_error_kind,
    upstream_headers,
    usage_of,
)
from ..upstream_stream import BodyInterrupted, UpstreamResponse
from ..worker_load import HOLD, LOAD, Hold

router = APIRouter()

UNIT_HEADER = "x-splitwatch-unit"
FORCE_HEADER = "x-splitwatch-force-arm"
Kind = Literal["chat", "completions"]
R = TypeVar("R")  # what the upstream call returns: a response, or a response and its whole body


# Declared for the OpenAPI document (and any app that mounts this router); the proxy's app calls
# proxy_completion directly for these two paths (app.ProxyApp).
@router.post("/v1/chat/completions", openapi_extra=CHAT_REQUEST)
async def chat_completions(request: Request) -> Response:
    """Return the upstream's chat completion (JSON or SSE stream) for the request's arm."""
    return await proxy_completion(request, "chat")


@router.post("/v1/completions", openapi_extra=COMPLETION_REQUEST)
async def completions(request: Request) -> Response:
    """Return the upstream's text completion (JSON or SSE stream) for the request's arm."""
    return await proxy_completion(request, "completions")


async def proxy_completion(request: Request, kind: Kind) -> Response:
    """Return the answer to one completion request of ``kind`` (``chat`` or ``completions``), or refuse it
    at once (503, ``worker_overloaded``) when the worker holds ``proxy.max_concurrent_requests`` already."""
    runtime: Runtime = request.app.state.runtime
    limit = runtime.snapshot.config.proxy.max_concurrent_requests
    if limit and LOAD.held > limit:  # this request is one of them
        # before the body is read: refusing costs little, and the retry is served elsewhere or later
        metrics.REQUESTS_REFUSED.inc()
        raise WorkerOverloaded(f"this proxy worker holds {limit} requests already (proxy.max_concurrent_requests); "
                               "retry in a moment", headers={"retry-after": "1"})
    return await _proxy(request, kind)


def validate_body(body: dict[str, Any], kind: Kind, max_id_bytes: int) -> None:
    """Raise InvalidRequest naming the field when the body is not a valid request of this kind."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model",
                             code="missing_required_parameter" if model is None else "invalid_type")
    check_identifier(model, "model", max_id_bytes)
    if kind == "chat":
        messages = body.get("messages")
        if messages is None:
            raise InvalidRequest("'messages' is required", param="messages", code="missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", param="messages", code="invalid_type")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise InvalidRequest(f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]",
                                     code="invalid_type")
    else:
        prompt = body.get("prompt")
        if prompt is None:
            raise InvalidRequest("'prompt' is required", param="prompt", code="missing_required_parameter")
        if not isinstance(prompt, str | list):
            raise InvalidRequest("'prompt' must be a string or an array", param="prompt", code="invalid_type")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream", code="invalid_type")
    if "user" in body and not isinstance(body["user"], str):
        raise InvalidRequest("'user' must be a string", param="user", code="invalid_type")
    if body.get("user"):
        check_identifier(body["user"], "user", max_id_bytes)


@dataclass
class _Call:
    """Everything the response path needs to log one proxied request."""

    runtime: Runtime
    assignment: Assignment
    request_id: str
    arm_label: str
    stream: bool
    started: float
    log_text: bool
    unit_id: str | None = None
    sent_at: float = 0.0
    holds_stream_slot: bool = False  # counted in runtime.open_streams until the call finishes
    shadow_pair: ShadowPair | None = None  # set when this control request is mirrored to a candidate
    span: RequestSpan | None = None  # its OpenTelemetry span, when tracing is on (docs/tracing.md)

    def release_stream_slot(self) -> None:
        """Give back this call's place among the worker's open streams (once; later calls do nothing)."""
        if self.holds_stream_slot:
            self.holds_stream_slot = False
            self.runtime.open_streams -= 1
            metrics.OPEN_STREAMS.dec()

    def finish(self, status: int, upstream_s: float, *, ttft_s: float | None = None,
               prompt_tokens: int | None = None, completion_tokens: int | None = None,
               error: str | None = None, text: str | None = None, finish_reason: str | None = None,
               answer_sample: bytes = b"") -> None:
        """Give back the stream slot, record metrics and publish the response event of this request."""
        self.release_stream_slot()
        a = self.assignment
        series = arm_series(a.experiment, self.arm_label)
        series.requests(status).inc()
        series.duration.observe(upstream_s)
        if ttft_s is not None:
            series.ttft.observe(ttft_s)
        if prompt_tokens:
            series.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            series.completion_tokens.inc(completion_tokens)
        if error:
            metrics.UPSTREAM_ERRORS.labels(a.experiment, self.arm_label, error).inc()
        latency_ms, ttft_ms = round(upstream_s * 1000, 3), None if ttft_s is None else round(ttft_s * 1000, 3)
        if a.logged and self.runtime.publisher is not None:
            self.runtime.publisher.publish(response_event(
                a.experiment, a.phase, a.arm, self.unit_id, self.request_id, status, latency_ms, ttft_ms,
                prompt_tokens, completion_tokens, error, self.stream, a.forced, text if self.log_text else None,
                finish_reason, answer_sample))
        if self.shadow_pair is not None:
            pair, self.shadow_pair = self.shadow_pair, None
            pair.control_done(SideResult(ShadowSide(
                status_code=status, latency_ms=latency_ms, ttft_ms=ttft_ms, prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens, error=error, finish_reason=finish_reason), answer_sample, text))
        if self.span is not None:
            span, self.span = self.span, None
            span.end(status, prompt_tokens, completion_tokens, finish_reason, error, text)

    def trace_headers(self) -> dict[str, str] | None:
        """Return the ``traceparent`` to send upstream (None with tracing off: the headers stay as they were)."""
        return None if self.span is None else self.span.upstream_headers()

    def abandon(self, exc: BaseException) -> None:
        """End the span of a request that failed inside the proxy before it was logged."""
        if self.span is not None:
            span, self.span = self.span, None
            span.end(None, None, None, None, f"internal:{type(exc).__name__}")


def _headers(a: Assignment, request_id: str) -> dict[str, str]:
    headers = {"x-splitwatch-experiment": a.experiment, "x-splitwatch-arm": a.arm,
               "x-splitwatch-request-id": request_id}
    if not a.in_experiment:
        headers["x-splitwatch-excluded"] = a.excluded_reason or "excluded"
    return headers


async def _proxy(request: Request, kind: Kind) -> Response:
    """Return the answer to one completion request: checked, routed, assigned, logged and forwarded."""
    started = time.perf_counter()
    runtime: Runtime = request.app.state.runtime
    snap = runtime.snapshot
    config = snap.config
    limits = config.proxy
    raw = await read_limited_body(request, limits.max_body_bytes, limits.body_timeout_s)
    body = parse_json_object(request, raw, limits.max_json_depth)
    validate_body(body, kind, limits.max_id_bytes)
    model: str = body["model"]
    exp = snap.table.for_model(model)
    path = "/chat/completions" if kind == "chat" else "/completions"
    if exp is None:
        if limits.passthrough is not None:
            return await _passthrough(request, limits.passthrough, path, raw)
        raise ModelNotFound(f"The model '{model}' does not exist or is not served by this proxy",
                            param="model")
    unit_id, forced = _unit_and_forced_arm(request, body, exp.config, limits)
    attributes = snap.attributes.of_request(request.headers, body)
    stream = body.get("stream") is True
    if stream:
        _refuse_past_max_streams(runtime, limits.max_concurrent_streams)
    a = runtime.assign(exp, unit_id, forced)
    arm = exp.config.arm(a.arm)
    assert arm is not None
    call = _open_call(request, runtime, config, a, arm, kind, model, body, unit_id, stream, started)
    try:
        if a.logged:
            _publish_exposure(runtime, config, a, arm, body, model, unit_id, call.request_id, attributes)
        elif a.excluded_reason:
            metrics.UNASSIGNED_REQUESTS.labels(a.experiment, a.excluded_reason).inc()
        body["model"] = arm.upstream.model
        strip_usage = stream and _request_stream_usage(body, arm.upstream)
        _mirror_if_shadowed(runtime, exp.config, call, body, path, kind)
        if stream:
            return await _forward_stream(request, call, arm, path, orjson.dumps(body), strip_usage)
        return await _forward(request, call, arm, path, orjson.dumps(body))
    except BaseException as exc:
        call.release_stream_slot()  # the stream never started; finish() gives it back otherwise
        call.abandon(exc)
        raise


def _unit_and_forced_arm(request: Request, body: dict[str, Any], exp: ExperimentConfig,
                         limits: ProxyConfig) -> tuple[str | None, str | None]:
    """Return the request's experiment unit (``user``, else ``X-Splitwatch-Unit``) and forced arm, if any;
    raise InvalidRequest naming the field when one is too long, forcing is off or names no arm, or a
    required unit is missing."""
    unit_id = body.get("user") or request.headers.get(UNIT_HEADER) or None
    if unit_id is not None and not body.get("user"):
        check_identifier(unit_id, "X-Splitwatch-Unit", limits.max_id_bytes)
    forced = request.headers.get(FORCE_HEADER)
    if forced is not None:
        check_identifier(forced, "X-Splitwatch-Force-Arm", limits.max_id_bytes)
        if not limits.allow_forced_arm:
            raise InvalidRequest(f"the {FORCE_HEADER} header is disabled (proxy.allow_forced_arm)",
                                 param=FORCE_HEADER, code="forced_arm_disabled")
        if exp.arm(forced) is None:
            raise InvalidRequest(f"unknown arm {forced!r} in {FORCE_HEADER}; arms: "
                                 f"{[a.name for a in exp.arms]}", param=FORCE_HEADER, code="unknown_arm")
    if unit_id is None and forced is None and limits.require_unit:
        raise InvalidRequest("an experiment unit is required: set 'user' in the body or the "
                             "X-Splitwatch-Unit header", param="user", code="missing_unit")
    return unit_id, forced


def _refuse_past_max_streams(runtime: Runtime, limit: int) -> None:
    """Raise Overloaded (503, Retry-After) when this worker relays ``limit`` streams already (0: no limit)."""
    if limit and runtime.open_streams >= limit:
        # Refused before anything is logged: this request was not served, its retry will be.
        metrics.STREAMS_REFUSED.inc()
        raise Overloaded(f"this proxy worker is relaying {limit} streams already (proxy.max_concurrent_streams); "
                         "retry in a moment", headers={"retry-after": "1"})


def _open_call(request: Request, runtime: Runtime, config: Config, a: Assignment, arm: ArmConfig, kind: Kind,
               model: str, body: dict[str, Any], unit_id: str | None, stream: bool, started: float) -> _Call:
    """Return the request's :class:`_Call` under a new request id, its span started (tracing on) and its
    place among the worker's open streams taken (a stream)."""
    request_id = new_uuid4()
    call = _Call(runtime, a, request_id, a.arm if a.in_experiment else UNASSIGNED_ARM,
                 stream, started, config.proxy.log_text, unit_id=unit_id)
    if runtime.tracing is not None:
        call.span = runtime.tracing.start_request(
            request.headers, kind, arm.upstream.model, model, arm.upstream.base_url, a.experiment, call.arm_label,
            request_id, stream, started, body, captures_text(config))
    if stream:
        call.holds_stream_slot = True
        runtime.open_streams += 1
        metrics.OPEN_STREAMS.inc()
    return call


def _mirror_if_shadowed(runtime: Runtime, exp: ExperimentConfig, call: _Call, body: dict[str, Any], path: str,
                        kind: Kind) -> None:
    """Mirror a control request of an experiment whose shadow traffic is on to its candidate (docs/shadow.md)."""
    shadow = exp.shadow
    a = call.assignment
    if (shadow is not None and a.in_experiment and a.arm == exp.control.name
            and runtime.control.table.effective(exp).shadow_enabled(exp)):
        candidate = exp.arm(shadow.arm)
        assert candidate is not None  # the config checks it
        call.shadow_pair = maybe_mirror(runtime, shadow, candidate, a, body, path, call.unit_id, call.request_id,
                                        call.stream, call.log_text, call.span, kind)


def _publish_exposure(runtime: Runtime, config: Config, a: Assignment, arm: ArmConfig, body: dict[str, Any],
                      model: str, unit_id: str | None, request_id: str, attributes: dict[str, str] | None) -> None:
    if runtime.publisher is None:
        return
    parts = prompt_text(body)  # once: it joins every message of a possibly long history
    runtime.publisher.publish(exposure_event(
        a.experiment, a.phase, a.arm, unit_id, request_id, model, arm.upstream.model, a.forced, a.holdout,
        features_of_prompt(*parts), attributes, parts[0] if config.proxy.log_text else None,
        TEXT_KIND_PROMPT + parts[1][:TEXT_SAMPLE_CHARS].encode("utf-8", "replace")))


def _passed_through(resp: UpstreamResponse, content: bytes, headers: dict[str, str]) -> Response:
    """Return the upstream's answer unchanged, except a 5xx whose body is not an OpenAI error:
    that one is replaced by an OpenAI body (same status) so that clients can parse it."""
    status = resp.status_code
    if status >= 500 and not is_openai_error(content):
        return RawResponse(error_body(f"the upstream model endpoint answered HTTP {status}", "upstream_error",
                                      code="upstream_error"), status, headers, "application/json")
    return RawResponse(content, status, headers, resp.headers.get("content-type", "application/json"))


async def _open_upstream(request: Request, call: _Call, up: UpstreamConfig, send: Awaitable[R],
                         headers: dict[str, str]) -> R | None:
    """Return the upstream's response (headers at least), or None when the client left first.

    Raises UpstreamError: 504 on a timeout; 502 when the upstream cannot be reached
    (``connect_error``), breaks the protocol before answering (``protocol_error``) or cuts its
    body short (``body_interrupted``). Every outcome is logged; the error carries the request's
    ``X-Splitwatch-Request-Id`` like any answer.
    """
    call.sent_at = time.perf_counter()
    try:
        return await _upstream_wait(request, send, up.timeout_s)
    except ClientDisconnected:
        call.finish(499, time.perf_counter() - call.sent_at, error="client_disconnected")
        return None
    except httpx.TimeoutException:
        call.finish(504, time.perf_counter() - call.sent_at, error="timeout")
        raise UpstreamError(f"the upstream model endpoint did not answer within {up.timeout_s:g} s",
                            status_code=504, code="upstream_timeout", headers=headers) from None
    except BodyInterrupted as exc:
        raise _interrupted(call, exc.cause, headers) from None
    except httpx.HTTPError as exc:
        if isinstance(exc, httpx.ConnectError):
            reason, code, what = "connect_error", "upstream_unreachable", "is unreachable"
        else:
            reason, code, what = "protocol_error", "upstream_protocol_error", "gave no valid answer"
        call.finish(502, time.perf_counter() - call.sent_at, error=reason)
        raise UpstreamError(f"the upstream model endpoint {what} ({type(exc).__name__})", code=code,
                            headers=headers) from None


async def _upstream_wait(request: Request, send: Awaitable[R], timeout_s: float) -> R:
    """Return what ``send`` returns, awaited in this task within ``timeout_s``, the request not counted among
    the worker's held ones meanwhile: waiting for the upstream is not the worker's load
    (``proxy.max_concurrent_requests``).

    Raises ClientDisconnected when the client's connection is lost first (the server's protocol calls
    :attr:`Hold.on_lost`, which cancels this task: no watcher task per request), ``httpx.ReadTimeout``
    past ``timeout_s``.
    """
    hold: Hold | None = request.scope.get(HOLD)
    if hold is None:  # a server without the proxy's protocol (tests' ASGI transports)
        return await call_until_disconnect(request, send, timeout_s)
    if hold.lost:
        send.close()  # type: ignore[attr-defined]  # a coroutine never awaited
        raise ClientDisconnected()
    task = asyncio.current_task()
    assert task is not None
    hold.on_lost = task.cancel
    hold.pause()
    try:
        async with asyncio.timeout(timeout_s):
            return await send
    except TimeoutError:
        raise httpx.ReadTimeout(f"no complete answer within {timeout_s:g} s") from None
    except asyncio.CancelledError:
        if hold.lost and task.uncancel() == 0:  # cancelled by on_lost, not by the server's shutdown
            raise ClientDisconnected() from None
        raise
    finally:
        hold.on_lost = None
        hold.resume()


def _interrupted(call: _Call, cause: httpx.HTTPError, headers: dict[str, str]) -> UpstreamError:
    """Log a body the upstream cut short (502 ``body_interrupted``); return the error to raise."""
    call.finish(502, time.perf_counter() - call.sent_at, error="body_interrupted")
    return UpstreamError(f"the upstream model endpoint broke off its answer ({type(cause).__name__})",
                         code="upstream_interrupted", headers=headers)


async def _forward(request: Request, call: _Call, arm: ArmConfig, path: str, payload: bytes) -> Response:
    up = arm.upstream
    # the stream path's upstream protocol and pool (upstream_stream.py), for whole answers too: one parse of
    # the answer by httptools, no httpx request and response objects per call (docs/benchmarks.md, issue 32)
    pool = call.runtime.clients.stream_pool(up)
    headers = _headers(call.assignment, call.request_id)
    answered = await _open_upstream(request, call, up, pool.fetch(
        path, payload, upstream_headers(up, call.request_id, call.trace_headers()), up.timeout_s), headers)
    if answered is None:
        return Response(status_code=499)
    resp, content = answered
    upstream_s = time.perf_counter() - call.sent_at
    status = resp.status_code
    ptok = ctok = None
    text = finish = None
    sample = b""
    if status < 400:
        try:
            parsed = orjson.loads(content)
        except orjson.JSONDecodeError:
            parsed = None
        ptok, ctok = usage_of(parsed)
        text = completion_content(parsed)[0]
        finish = finish_reason_of(parsed)
        if call.span is not None:
            call.span.response(parsed)
        if call.assignment.logged:
            sample = TEXT_KIND_ANSWER + (text or "")[:ANSWER_SAMPLE_CHARS].encode("utf-8", "replace")
    call.finish(status, upstream_s, prompt_tokens=ptok, completion_tokens=ctok, error=status_error_kind(status),
                text=text, finish_reason=finish, answer_sample=sample)
    metrics.PROXY_OVERHEAD.observe(time.perf_counter() - call.started - upstream_s)
    return _passed_through(resp, content, headers)


def _request_stream_usage(body: dict[str, Any], up: UpstreamConfig) -> bool:
    """Ask the upstream for the stream's token usage when the client did not; return True if asked."""
    opts = body.get("stream_options")
    if not up.stream_usage or (isinstance(opts, dict) and opts.get("include_usage") is True):
        return False
    body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return True


async def _forward_stream(request: Request, call: _Call, arm: ArmConfig, path: str,
                          payload: bytes, strip_usage: bool = False) -> Response:
    up = arm.upstream
    pool = call.runtime.clients.stream_pool(up)
    headers = _headers(call.assignment, call.request_id)
    resp = await _open_upstream(request, call, up, pool.open(
        path, payload, upstream_headers(up, call.request_id, call.trace_headers()), up.timeout_s), headers)
    if resp is None:
        return Response(status_code=499)
    if resp.status_code >= 400:
        # An error before the stream started: answer it as a plain JSON error.
        try:
            content = await resp.aread()
        except httpx.HTTPError as exc:
            raise _interrupted(call, exc, headers) from None
        finally:
            await resp.aclose()
        upstream_s = time.perf_counter() - call.sent_at
        status = resp.status_code
        call.finish(status, upstream_s, error=status_error_kind(status))
        return _passed_through(resp, content, headers)
    metrics.PROXY_OVERHEAD.observe(call.sent_at - call.started)
    hold: Hold | None = request.scope.get(HOLD)
    if hold is not None:
        hold.pause()  # a stream's relay is bounded by proxy.max_concurrent_streams, not by this count

    def on_end(end: StreamEnd) -> None:
        call.finish(end.status, time.perf_counter() - call.sent_at, ttft_s=end.ttft_s,
                    prompt_tokens=end.prompt_tokens, completion_tokens=end.completion_tokens, error=end.error,
                    finish_reason=end.finish_reason, answer_sample=end.answer_sample)

    return StreamRelay(resp, headers, sent_at=call.sent_at, strip_usage=strip_usage,
                       sample=call.assignment.logged, on_end=on_end)


async def _passthrough(request: Request, up: UpstreamConfig, path: str, raw: bytes) -> Response:
    """Forward a request for a model no experiment matches, unchanged and unlogged."""
    runtime: Runtime = request.app.state.runtime
    transport, release = runtime.clients.lease(up)
    req = build_request(up, path, raw, new_uuid4())
    try:
        resp = await _upstream_wait(request, transport.handle_async_request(req), up.timeout_s)
    except ClientDisconnected:
        release()
        return Response(status_code=499)
    except httpx.TimeoutException:
        release()
        raise UpstreamError("the passthrough endpoint did not answer in time", status_code=504,
                            code="upstream_timeout") from None
    except httpx.HTTPError as exc:
        release()
        raise UpstreamError(f"the passthrough endpoint is unreachable ({type(exc).__name__})",
                            code="upstream_unreachable") from None

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.HTTPError:
            return
        finally:
            release()
            with anyio.CancelScope(shield=True):
                await resp.aclose()

    return StreamingResponse(relay(), status_code=resp.status_code,
                             media_type=resp.headers.get("content-type", "application/json"))


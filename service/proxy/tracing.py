"""OpenTelemetry traces of the proxy's requests, after the GenAI semantic conventions (docs/tracing.md).

One span per proxied request (``chat MODEL`` or ``text_completion MODEL``, kind CLIENT: the call to the
model), from the request's arrival to its last byte, continuing the client's ``traceparent`` and passing
its own to the upstream. A shadow call is a span of its own trace, linked to its request's span and
sampled with it. Spans leave through a background batch exporter (OTLP over HTTP/protobuf), with head
sampling; the standard ``OTEL_*`` variables configure what the ``tracing:`` section leaves unset.

With tracing off (no section, no ``OTEL_EXPORTER_OTLP_*ENDPOINT``) nothing is imported and the request
path is the same as without this module: every hook is behind ``span is None``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..config import Config, ConfigError, TracingConfig

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "splitwatch-proxy"
PROVIDER = "openai"  # gen_ai.provider.name: the API the upstream speaks (vLLM, TGI: OpenAI-compatible)
OPERATIONS = {"chat": "chat", "completions": "text_completion"}
SHADOW_ATTRIBUTE = "splitwatch.shadow"
_TRUE = {"true", "1", "yes"}


def tracing_wanted(config: Config, environ: Mapping[str, str]) -> bool:
    """Return True when the config or the standard environment turns tracing on."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if config.tracing is not None:
        return config.tracing.enabled
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _sampler_from_env(environ: Mapping[str, str]) -> Any:
    """Return the sampler OTEL_TRACES_SAMPLER (and _ARG) name, as every OpenTelemetry SDK reads them."""
    from opentelemetry.sdk.trace import sampling

    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
    try:
        ratio = float(raw)
        if not 0 <= ratio <= 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: expected a ratio between 0 and 1") from None
    samplers = {"always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF,
                "traceidratio": sampling.TraceIdRatioBased(ratio),
                "parentbased_always_on": sampling.DEFAULT_ON, "parentbased_always_off": sampling.DEFAULT_OFF,
                "parentbased_traceidratio": sampling.ParentBasedTraceIdRatio(ratio)}
    if name not in samplers:
        raise ConfigError(f"OTEL_TRACES_SAMPLER={name!r} is not supported; one of {sorted(samplers)}")
    return samplers[name]


def _follow_the_request(base: Any) -> Any:
    """Return a sampler that samples a shadow span exactly when its linked request span was sampled, and
    asks ``base`` for every other span."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class ShadowFollowsItsRequest(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
            if attributes and attributes.get(SHADOW_ATTRIBUTE) and links:
                sampled = links[0].context.trace_flags.sampled
                return SamplingResult(Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP,
                                      attributes if sampled else None)
            return base.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"ShadowFollowsItsRequest{{{base.get_description()}}}"

    return ShadowFollowsItsRequest()


def _exporter_settings(cfg: TracingConfig | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """Return the OTLP exporter's arguments the config sets (the exporter reads OTEL_* for the rest)."""
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf")
    if protocol != "http/protobuf":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: splitwatch exports OTLP over HTTP/protobuf "
                          "only; point it at the collector's HTTP port (4318)")
    out: dict[str, Any] = {}
    if cfg is None:
        return out
    if cfg.endpoint:
        out["endpoint"] = cfg.endpoint.rstrip("/") + "/v1/traces"
    if cfg.headers_env:
        missing = [v for v in cfg.headers_env.values() if not environ.get(v)]
        if missing:
            raise ConfigError(f"tracing.headers_env: environment variables not set: {missing}")
        out["headers"] = {name: environ[var] for name, var in cfg.headers_env.items()}
    out["timeout"] = cfg.export_timeout_s
    return out


class Tracing:
    """The proxy worker's tracer: starts request and shadow spans, flushes on shutdown."""

    def __init__(self, config: Config, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
        except ImportError as exc:
            raise ConfigError(f"tracing is on but OpenTelemetry is not installed ({exc}): "
                              "pip install 'splitwatch[tracing]'") from None
        cfg = config.tracing
        if cfg is not None and cfg.sample_ratio is not None:
            base = ParentBasedTraceIdRatio(cfg.sample_ratio)
        else:
            base = _sampler_from_env(environ)
        attributes: dict[str, Any] = {"service.version": _version()}
        if cfg is not None and cfg.service_name:
            attributes["service.name"] = cfg.service_name
        elif not environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = DEFAULT_SERVICE_NAME
        self.provider = TracerProvider(sampler=_follow_the_request(base), resource=Resource.create(attributes),
                                       shutdown_on_exit=False)
        batch: dict[str, Any] = {} if cfg is None else {"max_queue_size": cfg.max_queue_size}
        self.exporter = OTLPSpanExporter(**_exporter_settings(cfg, environ))
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter, **batch))
        self.tracer = self.provider.get_tracer("splitwatch.proxy", _version())
        self._trace = trace
        self._propagator = propagate.get_global_textmap()
        log.info("tracing on: %s, sampler %s", getattr(self.exporter, "_endpoint", "OTLP/HTTP"),
                 self.provider.sampler.get_description())

    def start_request(self, headers: Mapping[str, str], kind: str, upstream_model: str, requested_model: str,
                      base_url: str, experiment: str, arm: str, request_id: str, stream: bool,
                      started_perf: float, body: dict[str, Any], capture_text: bool = False) -> RequestSpan:
        """Return the span of one proxied request, continuing the client's ``traceparent`` if it sent one
        (``started_perf``: the request's arrival on the perf_counter clock; ``capture_text``: the prompt and
        the answer in the span, as the config in force allows: :func:`captures_text`)."""
        parent = self._propagator.extract(carrier=headers)
        operation = OPERATIONS.get(kind, kind)
        start_ns = time.time_ns() - int((time.perf_counter() - started_perf) * 1e9)
        # the attributes are set once the sampler kept the span: an unsampled request (99 in 100 at 1%)
        # pays for its trace context only (the samplers here read no attribute)
        span = self.tracer.start_span(f"{operation} {upstream_model}", context=parent,
                                      kind=self._trace.SpanKind.CLIENT, start_time=start_ns)
        if span.is_recording():
            attrs = _call_attributes(operation, upstream_model, base_url, experiment, arm, request_id, stream)
            attrs["splitwatch.requested_model"] = requested_model
            for key, attr in (("max_tokens", "gen_ai.request.max_tokens"),
                              ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p")):
                value = body.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    attrs[attr] = value
            if capture_text:
                attrs["gen_ai.input.messages"] = _input_messages(body, kind)
            span.set_attributes(attrs)
        return RequestSpan(self, span, capture_text)

    def start_shadow(self, request: RequestSpan, kind: str, upstream_model: str, base_url: str, experiment: str,
                     arm: str, request_id: str, stream: bool) -> RequestSpan:
        """Return the span of a shadow call: a trace of its own, linked to its request's span."""
        from opentelemetry.trace import Link

        operation = OPERATIONS.get(kind, kind)
        attrs = _call_attributes(operation, upstream_model, base_url, experiment, arm, request_id, stream)
        attrs[SHADOW_ATTRIBUTE] = True
        link = Link(request.span.get_span_context(), {"splitwatch.link": "shadow_of"})
        span = self.tracer.start_span(f"{operation} {upstream_model}", context=self._trace.set_span_in_context(
            self._trace.INVALID_SPAN), kind=self._trace.SpanKind.CLIENT, attributes=attrs, links=[link])
        return RequestSpan(self, span)

    def shutdown(self) -> None:
        """Export what is buffered (bounded by the exporter's timeout) and stop."""
        self.provider.shutdown()


def _call_attributes(operation: str, upstream_model: str, base_url: str, experiment: str, arm: str,
                     request_id: str, stream: bool) -> dict[str, Any]:
    """Return the attributes every span of a call to a model carries (a request's and a shadow call's)."""
    host, port = _server(base_url)
    return {"gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER, "gen_ai.system": PROVIDER,
            "gen_ai.request.model": upstream_model, "server.address": host, "server.port": port,
            "splitwatch.experiment": experiment, "splitwatch.arm": arm, "splitwatch.request_id": request_id,
            "splitwatch.stream": stream}


@functools.lru_cache(maxsize=256)
def _server(base_url: str) -> tuple[str, int]:
    """Return an upstream's host and port (``server.address``, ``server.port``), once per base URL."""
    url = urlsplit(base_url)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def _input_messages(body: dict[str, Any], kind: str) -> str:
    """Return the request's prompt as the GenAI conventions' ``gen_ai.input.messages`` JSON."""
    if kind == "chat":
        messages = body.get("messages") or []
        out = [{"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]}
               for m in messages if isinstance(m, dict)]
    else:
        out = [{"role": "user", "parts": [{"type": "text", "content": body.get("prompt")}]}]
    return orjson.dumps(out).decode()


class RequestSpan:
    """One request's (or shadow call's) span: the trace headers for its upstream, and its end."""

    __slots__ = ("capture_text", "span", "tracing")

    def __init__(self, tracing: Tracing, span: Any, capture_text: bool = False) -> None:
        self.tracing = tracing
        self.span = span
        self.capture_text = capture_text

    def upstream_headers(self) -> dict[str, str]:
        """Return ``traceparent`` (and ``tracestate``) naming this span, for the upstream call."""
        carrier: dict[str, str] = {}
        self.tracing._propagator.inject(carrier, context=self.tracing._trace.set_span_in_context(self.span))
        return carrier

    def response(self, parsed: Any) -> None:
        """Record what a whole answer says of itself (its id and the model that answered)."""
        if isinstance(parsed, dict) and self.span.is_recording():
            if isinstance(parsed.get("id"), str):
                self.span.set_attribute("gen_ai.response.id", parsed["id"])
            if isinstance(parsed.get("model"), str):
                self.span.set_attribute("gen_ai.response.model", parsed["model"])

    def end(self, status: int | None, prompt_tokens: int | None, completion_tokens: int | None,
            finish_reason: str | None, error: str | None, text: str | None = None) -> None:
        """End the span with the call's outcome: status, tokens, finish reason, error."""
        span = self.span
        if span.is_recording():
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if prompt_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
            if completion_tokens is not None:
                span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
            if finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
            if text is not None and self.capture_text:
                span.set_attribute("gen_ai.output.messages", orjson.dumps([{
                    "role": "assistant", "parts": [{"type": "text", "content": text}],
                    "finish_reason": finish_reason or ""}]).decode())
            if error or (status is not None and status >= 500):
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute("error.type", error or str(status))
                span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status}"))
        span.end()


def captures_text(config: Config) -> bool:
    """Return True when spans may carry prompt and completion text under this config (reloads included)."""
    return bool(config.tracing is not None and config.tracing.capture_text and config.proxy.log_text)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("splitwatch")
    except PackageNotFoundError:
        return "unknown"


def check_tracing(config: Config, environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError naming the setting when tracing is on but cannot run as configured (before the
    workers start: a bad sampler, protocol or header variable, or OpenTelemetry not installed)."""
    environ = os.environ if environ is None else environ
    if not tracing_wanted(config, environ):
        return
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"tracing is on but OpenTelemetry is not installed ({exc}): "
                          "pip install 'splitwatch[tracing]'") from None
    if config.tracing is None or config.tracing.sample_ratio is None:
        _sampler_from_env(environ)
    _exporter_settings(config.tracing, environ)


def open_tracing(config: Config, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Return the worker's tracing when the config or the environment turns it on, else None."""
    environ = os.environ if environ is None else environ
    return Tracing(config, environ) if tracing_wanted(config, environ) else None

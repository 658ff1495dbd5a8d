"""Issue 31: OpenTelemetry GenAI spans of the proxy's requests, received by a real OTLP/HTTP endpoint in
the test (decoded with opentelemetry-proto): attributes, the client's trace continued and passed upstream,
the shadow call as a linked span, the OTEL_* variables, and no text unless the privacy setting allows it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from splitwatch.service.config import Config, ConfigError
from splitwatch.service.proxy.tracing import check_tracing, tracing_wanted
from tests.harness import base_config, experiment_config
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

CLIENT_KIND = 3  # SpanKind.SPAN_KIND_CLIENT in OTLP
STATUS_ERROR = 2


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.stop()


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def _chat(proxy: Any, user: str, traceparent: str | None = None, stream: bool = False,
          **extra: Any) -> httpx.Response:
    headers = {"traceparent": traceparent} if traceparent else {}
    body = {"model": "support-bot", "user": user, "messages": [{"role": "user", "content": "where is my parcel"}],
            "max_tokens": 32, "temperature": 0.2, **extra}
    if stream:
        body["stream"] = True
    r = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert r.status_code in (200, 502), r.text
    return r


def _upstream_traceparents(stubs: Any) -> list[str]:
    return [tp for stub in stubs for tp in stub.stats()["traceparents"]]


def _check_genai(span: ReceivedSpan, arm_models: dict[str, str], port_of: dict[str, int]) -> None:
    a = span.attributes
    assert span.kind == CLIENT_KIND and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai" and a["splitwatch.experiment"] == "support-ft"
    arm = a["splitwatch.arm"]
    assert a["gen_ai.request.model"] == arm_models[arm] and span.name == f"chat {arm_models[arm]}"
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == port_of[arm]
    assert a["gen_ai.request.max_tokens"] == 32 and a["gen_ai.request.temperature"] == 0.2
    assert a["splitwatch.requested_model"] == "support-bot" and a["http.response.status_code"] == 200
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert span.resource["service.name"] == "splitwatch-proxy" and span.end_ns > span.start_ns


def test_spans_follow_the_genai_conventions_and_continue_the_clients_trace(
        start_proxy, stubs, broker, topic, tmp_path, receiver) -> None:
    exp = experiment_config(*stubs, shadow={"arm": "finetuned", "share": 1.0})
    cfg = base_config(broker.bootstrap, topic, tmp_path, [exp], log_text=True)
    cfg["tracing"] = {"endpoint": receiver.url, "sample_ratio": 1.0, "capture_text": True}
    proxy = start_proxy(config=cfg, env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    arm_models = {"base": "llama-base", "finetuned": "llama-ft"}
    port_of = {"base": stubs[0].port, "finetuned": stubs[1].port}

    for stream in (False, True):  # a whole answer and a stream, each continuing the client's trace
        traceparent, trace_id, parent = _traceparent()
        r = _chat(proxy, f"u-{stream}", traceparent, stream=stream)
        (span,) = receiver.wait_for(lambda s, t=trace_id: s.trace_id == t and "splitwatch.shadow" not in s.attributes)
        assert span.parent_span_id == parent and span.attributes["splitwatch.stream"] is stream
        assert span.attributes["splitwatch.request_id"] == r.headers["x-splitwatch-request-id"]
        assert span.attributes["splitwatch.arm"] == r.headers["x-splitwatch-arm"]
        _check_genai(span, arm_models, port_of)
        # the upstream received the proxy's span as its parent, in the client's trace
        assert f"00-{trace_id}-{span.span_id}-01" in _upstream_traceparents(stubs)
        if not stream:
            assert span.attributes["gen_ai.response.model"] == arm_models[span.attributes["splitwatch.arm"]]
            assert span.attributes["gen_ai.response.id"]
        # proxy.log_text and tracing.capture_text: the prompt and (whole answers) the answer
        assert "where is my parcel" in span.attributes["gen_ai.input.messages"]
        if not stream:
            assert '"role":"assistant"' in span.attributes["gen_ai.output.messages"]

    # a control request mirrored to the candidate: the shadow call's span is in a trace of its own, linked
    for i in range(40):
        traceparent, trace_id, _ = _traceparent()
        if _chat(proxy, f"shadowed-{i}", traceparent).headers["x-splitwatch-arm"] == "base":
            break
    (request_span,) = receiver.wait_for(lambda s: s.trace_id == trace_id)
    (shadow,) = receiver.wait_for(lambda s: any(link[1] == request_span.span_id for link in s.links))
    assert shadow.attributes["splitwatch.shadow"] is True and shadow.trace_id != trace_id
    assert shadow.links[0][0] == trace_id and shadow.links[0][2] == {"splitwatch.link": "shadow_of"}
    assert shadow.parent_span_id == "" and shadow.attributes["splitwatch.arm"] == "finetuned"
    assert shadow.attributes["gen_ai.request.model"] == "llama-ft" and shadow.attributes["gen_ai.usage.output_tokens"]
    assert any(tp.startswith(f"00-{shadow.trace_id}-{shadow.span_id}-") for tp in stubs[1].stats()["traceparents"])

    # an upstream failure: the span says so
    traceparent, trace_id, _ = _traceparent()
    _chat(proxy, "failing", traceparent, metadata={"stub_status": "502"})
    (failed,) = receiver.wait_for(lambda s: s.trace_id == trace_id and "splitwatch.shadow" not in s.attributes)
    assert failed.status_code == STATUS_ERROR and failed.attributes["error.type"] == "upstream_5xx"
    assert failed.attributes["http.response.status_code"] == 502

    # the official client, streaming, with its own traceparent header
    traceparent, trace_id, _ = _traceparent()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", default_headers={"traceparent": traceparent})
    chunks = list(client.chat.completions.create(model="support-bot", user="sdk", stream=True,
                                                  messages=[{"role": "user", "content": "hello"}]))
    assert chunks
    (sdk_span,) = receiver.wait_for(lambda s: s.trace_id == trace_id and "splitwatch.shadow" not in s.attributes)
    assert sdk_span.attributes["splitwatch.stream"] is True and sdk_span.attributes["gen_ai.usage.output_tokens"] > 0


def test_the_standard_environment_alone_turns_tracing_on_and_its_sampler_is_honoured(
        start_proxy, stubs, receiver) -> None:
    # no tracing section: OTEL_EXPORTER_OTLP_ENDPOINT turns it on; parentbased_traceidratio at 0 keeps only
    # the traces a client started and sampled; no text, as proxy.log_text is off
    proxy = start_proxy(env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
                             "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0",
                             "OTEL_SERVICE_NAME": "gateway-eu"})
    before = set(_upstream_traceparents(stubs))  # the stub models serve the module's other tests too
    _chat(proxy, "unsampled")
    traceparent, trace_id, parent = _traceparent()
    _chat(proxy, "sampled", traceparent)
    (span,) = receiver.wait_for(lambda s: s.trace_id == trace_id)
    assert span.parent_span_id == parent and span.resource["service.name"] == "gateway-eu"
    assert "gen_ai.input.messages" not in span.attributes and "gen_ai.output.messages" not in span.attributes
    time.sleep(0.5)  # the batch exporter's delay is 100 ms: anything else sampled would be here by now
    assert [s.trace_id for s in receiver.spans] == [trace_id]  # a receiver of this test's own
    # the unsampled request still passed a valid trace context upstream, its sampled flag (bit 0) unset
    unsampled = [tp for tp in _upstream_traceparents(stubs) if trace_id not in tp and tp not in before]
    assert len(unsampled) == 1 and int(unsampled[0][-2:], 16) & 1 == 0, unsampled


def test_tracing_settings_are_checked_before_the_workers_start() -> None:
    cfg = Config.model_validate({})
    assert not tracing_wanted(cfg, {})
    assert tracing_wanted(cfg, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing_wanted(cfg, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    on = Config.model_validate({"tracing": {}})
    assert tracing_wanted(on, {}) and not tracing_wanted(Config.model_validate({"tracing": {"enabled": False}}),
                                                          {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"):
        check_tracing(on, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER='jaeger_remote'"):
        check_tracing(on, {"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        check_tracing(on, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"})
    with pytest.raises(ConfigError, match="TOKEN_VAR"):
        check_tracing(Config.model_validate({"tracing": {"headers_env": {"authorization": "TOKEN_VAR"}}}), {})
    with pytest.raises(Exception, match=r"tracing\.capture_text: true needs proxy\.log_text"):
        Config.model_validate({"tracing": {"capture_text": True}})

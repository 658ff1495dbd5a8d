"""Every bad input and upstream failure gets its documented status and an OpenAI error body."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest

from tests.harness import experiment_config

CHAT = {"model": "support-bot", "messages": [{"role": "user", "content": "hi"}], "user": "err-unit"}


def _assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.fixture
def proxy(start_proxy, stubs):
    exp = experiment_config(*stubs)
    for arm in exp["arms"]:
        arm["upstream"]["timeout_s"] = 0.5
    return start_proxy(exp, max_body_bytes=4096)


def test_malformed_requests(proxy) -> None:
    url = proxy.url + "/v1/chat/completions"
    _assert_error(httpx.post(url, content=b'{"model": ', headers={"content-type": "application/json"}),
                  400, "invalid_json")
    _assert_error(httpx.post(url, content=b"[1, 2]", headers={"content-type": "application/json"}),
                  400, "invalid_json")
    _assert_error(httpx.post(url, content=b"model=x", headers={"content-type": "application/x-www-form-urlencoded"}),
                  415, "unsupported_media_type")
    _assert_error(httpx.post(url, json={"model": "support-bot"}), 400, "missing_required_parameter", "messages")
    _assert_error(httpx.post(url, json={"model": "support-bot", "messages": "hi"}), 400, "invalid_type", "messages")
    _assert_error(httpx.post(url, json={"messages": [{"role": "user", "content": "x"}]}), 400, param="model")
    _assert_error(httpx.post(url, json={**CHAT, "stream": "yes"}), 400, "invalid_type", "stream")
    _assert_error(httpx.post(url, json={**CHAT, "user": 42}), 400, "invalid_type", "user")
    _assert_error(httpx.post(proxy.url + "/v1/completions", json={"model": "support-bot"}), 400, param="prompt")
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    _assert_error(httpx.post(url, json=big), 413, "request_too_large")

    def chunked():
        yield b'{"model": "support-bot", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    _assert_error(httpx.post(url, content=chunked(), headers={"content-type": "application/json"}), 413,
                  "request_too_large")
    _assert_error(httpx.post(url, json={**CHAT, "model": "gpt-unknown"}), 404, "model_not_found", "model")
    _assert_error(httpx.post(url, json=CHAT, headers={"X-Splitwatch-Force-Arm": "nope"}), 400, "unknown_arm")
    _assert_error(httpx.get(proxy.url + "/v1/nothing-here"), 404)
    _assert_error(httpx.get(url), 405)


def test_openai_client_gets_typed_errors(proxy) -> None:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-unknown", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model="support-bot", messages=[])
    assert br.value.param == "messages"


def test_upstream_failures(proxy) -> None:
    url = proxy.url + "/v1/chat/completions"
    t0 = time.monotonic()
    err = _assert_error(httpx.post(url, json={**CHAT, "metadata": {"stub_latency_ms": "3000"}}), 504,
                        "upstream_timeout")
    assert time.monotonic() - t0 < 2.5 and err["type"] == "upstream_error"
    _assert_error(httpx.post(url, json={**CHAT, "stream": True, "metadata": {"stub_latency_ms": "3000"}}), 504,
                  "upstream_timeout")
    # An OpenAI-style 5xx body from the upstream passes through unchanged ...
    r = httpx.post(url, json={**CHAT, "metadata": {"stub_status": "503"}})
    assert _assert_error(r, 503, "stub_failure")["type"] == "server_error"
    assert r.headers["x-splitwatch-arm"]
    # ... a non-JSON one is wrapped so that clients can parse it, keeping the status.
    _assert_error(httpx.post(url, json={**CHAT, "metadata": {"stub_status": "502", "stub_error_body": "plain"}}),
                  502, "upstream_error")
    _assert_error(httpx.post(url, json={**CHAT, "stream": True, "metadata": {"stub_status": "500"}}), 500,
                  "stub_failure")
    # 4xx from the upstream passes through too
    _assert_error(httpx.post(url, json={**CHAT, "metadata": {"stub_status": "429"}}), 429, "stub_failure")
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'reason="timeout"' in metrics and 'reason="upstream_5xx"' in metrics


def test_unreachable_upstream(start_proxy, stubs) -> None:
    exp = experiment_config(*stubs)
    for arm in exp["arms"]:
        arm["upstream"]["base_url"] = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    proxy = start_proxy(exp)
    _assert_error(httpx.post(proxy.url + "/v1/chat/completions", json=CHAT), 502, "upstream_unreachable")


def test_require_unit(start_proxy) -> None:
    proxy = start_proxy(require_unit=True)
    body = {k: v for k, v in CHAT.items() if k != "user"}
    _assert_error(httpx.post(proxy.url + "/v1/chat/completions", json=body), 400, "missing_unit", "user")
    assert httpx.post(proxy.url + "/v1/chat/completions", json=body,
                      headers={"X-Splitwatch-Unit": "u"}).status_code == 200


def test_bad_outcomes(proxy) -> None:
    url = proxy.url + "/v1/outcomes"
    good = {"experiment": "support-ft", "unit_id": "u1", "metric": "resolved", "value": 1}
    _assert_error(httpx.post(url, json={**good, "experiment": "nope"}), 404, "experiment_not_found")
    _assert_error(httpx.post(url, json={**good, "metric": "revenue"}), 400, "unknown_metric")
    _assert_error(httpx.post(url, json={**good, "value": 0.5}), 400, param="value")
    _assert_error(httpx.post(url, json={**good, "value": "high"}), 400, param="value")
    _assert_error(httpx.post(url, json={k: v for k, v in good.items() if k != "unit_id"}), 400, param="unit_id")
    _assert_error(httpx.post(url, json={**good, "ts": "2026-01-01T00:00:00"}), 400, param="ts")
    _assert_error(httpx.post(url, json={**good, "extra": 1}), 400, param="extra")
    # A batch is all or nothing: the bad second item rejects the first too, naming its index.
    err = _assert_error(httpx.post(url, json=[good, {**good, "value": 7}]), 400)
    assert "[1]" in err["message"]
    _assert_error(httpx.post(url, json=[]), 400)
    _assert_error(httpx.post(url, json=[good] * 60), 413, "request_too_large")  # over max_body_bytes
    ok = httpx.post(url, json={**good, "ts": "2026-01-01T00:00:00+02:00"})
    assert ok.status_code == 202 and ok.json()["accepted"] == 1


def test_too_many_outcomes(start_proxy) -> None:
    proxy = start_proxy(max_outcomes_per_request=5)
    good = {"experiment": "support-ft", "unit_id": "u1", "metric": "resolved", "value": 1}
    _assert_error(httpx.post(proxy.url + "/v1/outcomes", json=[good] * 6), 400, "too_many_outcomes")
    assert httpx.post(proxy.url + "/v1/outcomes", json=[good] * 5).json()["accepted"] == 5


def test_client_disconnect_cancels_the_upstream(start_proxy, stubs) -> None:
    proxy = start_proxy()
    ft = stubs[1]
    headers = {"X-Splitwatch-Force-Arm": "finetuned"}
    before = ft.stats()
    # Leave only once the upstream has the request (a client timeout would race the forwarding).
    body = json.dumps({**CHAT, "metadata": {"stub_latency_ms": "10000"}}).encode()
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Splitwatch-Force-Arm: finetuned\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 10
        while ft.stats()["requests"] == before["requests"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ft.stats()["requests"] == before["requests"] + 1, "the upstream received the request"
    # a long stream (5,000 tokens, 2 ms apart: 10 s) that the client leaves after a few chunks
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers=headers, timeout=10,
                      json={**CHAT, "stream": True, "metadata": {"stub_tokens": "5000"}}) as r:
        assert r.status_code == 200
        it = r.iter_raw()
        next(it)
        next(it)
    deadline = time.monotonic() + 15
    after = ft.stats()
    while time.monotonic() < deadline and (after["requests_cancelled"] == before["requests_cancelled"]
                                           or after["streams_cancelled"] == before["streams_cancelled"]):
        time.sleep(0.1)
        after = ft.stats()
    assert after["requests_cancelled"] == before["requests_cancelled"] + 1
    assert after["streams_cancelled"] == before["streams_cancelled"] + 1
    assert after["streams_completed"] == before["streams_completed"]
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'reason="client_disconnected"' in metrics

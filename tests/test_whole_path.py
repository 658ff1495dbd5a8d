"""The whole-answer path byte for byte: every split of the upstream's body, Content-Length, chunked and
close-delimited framing, error statuses, and bodies cut short (issue 32's contract for whole answers).

The upstream is a scripted HTTP/1.1 server on a real port (raw asyncio): the request's ``metadata`` says
how to answer. Written against the httpx path before issue 32 moved whole answers onto the stream path's
upstream protocol; it must pass unchanged on both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.harness import experiment_config
from tests.test_stream_path import ScriptedUpstream  # its loopback server, thread and base URL

USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def answer(model: str) -> bytes:
    """Return the scripted upstream's chat completion (non-ASCII content, spaces kept as sent)."""
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hé là \u2014 ok"},
                         "finish_reason": "stop"}], "usage": USAGE}
    return orjson.dumps(body).replace(b'"choices"', b' "choices"')  # bytes a re-serialisation would change


OPENAI_ERROR = b'{"error": {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature", ' \
               b'"code": null}}'


class ScriptedWholeUpstream(ScriptedUpstream):
    """Answers each request as its ``metadata`` says: ``split`` (bytes per write), ``framing`` (``length``,
    ``chunked``, ``close``), ``status``, ``body`` (``answer``, ``openai_error``, ``plain``), ``cut`` (close the
    connection after this many body bytes)."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await self.read_request(reader)
                meta = req.get("metadata") or {}
                split, framing = int(meta.get("split", 1 << 20)), meta.get("framing", "length")
                status, kind = int(meta.get("status", 200)), meta.get("body", "answer")
                data = {"answer": answer(req["model"]), "openai_error": OPENAI_ERROR,
                        "plain": b"<html>upstream exploded</html>"}[kind]
                ctype = b"text/html" if kind == "plain" else b"application/json"
                cut = int(meta["cut"]) if "cut" in meta else None
                head_out = b"HTTP/1.1 %d X\r\ncontent-type: %s\r\n" % (status, ctype)
                if framing == "length":
                    head_out += b"content-length: %d\r\n" % len(data)
                elif framing == "chunked":
                    head_out += b"transfer-encoding: chunked\r\n"
                else:
                    head_out += b"connection: close\r\n"
                writer.write(head_out + b"\r\n")
                sent = 0
                for i in range(0, len(data), split):
                    piece = data[i:i + split]
                    if cut is not None and sent + len(piece) > cut:
                        piece = piece[:cut - sent]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" and piece else piece)
                    await writer.drain()
                    sent += len(piece)
                    if cut is not None and sent >= cut:
                        writer.close()
                        return
                if framing == "chunked":
                    writer.write(b"0\r\n\r\n")
                await writer.drain()
                if framing == "close":
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()



@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedWholeUpstream]:
    yield ScriptedWholeUpstream()


def _ask(url: str, **meta: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=10, json={
        "model": "support-bot", "user": "u-whole", "messages": [{"role": "user", "content": "hi"}], "metadata": meta})


def _tokens(url: str, kind: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("splitwatch_tokens_total{") and f'kind="{kind}"' in line)


def test_whole_answers_pass_byte_for_byte_at_every_split_and_framing(start_proxy, scripted) -> None:
    class Stub:  # the arms' upstream: the scripted server
        base_url = scripted.base_url

    proxy = start_proxy(experiment=experiment_config(Stub, Stub))
    n = 0
    for framing in ("length", "chunked", "close"):
        for split in (1, 2, 3, 7, 16, 64, 100, 1 << 20):
            r = _ask(proxy.url, split=str(split), framing=framing)
            assert r.status_code == 200, (framing, split, r.text)
            arm_model = "llama-base" if r.headers["x-splitwatch-arm"] == "base" else "llama-ft"
            assert r.content == answer(arm_model), (framing, split)
            assert r.headers["content-type"] == "application/json"
            assert r.headers["content-length"] == str(len(r.content)) and r.headers["x-splitwatch-request-id"]
            n += 1
    assert _tokens(proxy.url, "completion") == n * USAGE["completion_tokens"]
    assert _tokens(proxy.url, "prompt") == n * USAGE["prompt_tokens"]

    # an OpenAI error passes through as sent, status and body
    for framing in ("length", "chunked"):
        r = _ask(proxy.url, status="400", body="openai_error", framing=framing, split="5")
        assert r.status_code == 400 and r.content == OPENAI_ERROR
    # a 5xx that is not an OpenAI error becomes one, same status
    r = _ask(proxy.url, status="503", body="plain", framing="chunked", split="3")
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_error"
    assert r.json()["error"]["message"] == "the upstream model endpoint answered HTTP 503"

    # a body cut short, whatever the framing that promised more: 502 upstream_interrupted, counted
    for framing in ("length", "chunked"):
        for cut in ("1", "40"):
            r = _ask(proxy.url, framing=framing, cut=cut, split="8")
            assert r.status_code == 502, (framing, cut, r.text)
            assert r.json()["error"]["code"] == "upstream_interrupted" and r.headers["x-splitwatch-request-id"]
    metrics = httpx.get(proxy.url + "/metrics").text
    interrupted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("splitwatch_upstream_errors_total{") and "body_interrupted" in line)
    assert interrupted == 4


def test_past_max_concurrent_requests_a_worker_refuses_at_once(start_proxy, stubs) -> None:
    import socket

    proxy = start_proxy(max_concurrent_requests=1)
    port = int(proxy.url.rsplit(":", 1)[1])
    body = orjson.dumps({"model": "support-bot", "user": "slow", "messages": [{"role": "user", "content": "hi"}]})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        # one request in the worker's hands: its body is still arriving
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.3)
        refused = httpx.post(proxy.url + "/v1/chat/completions", timeout=10, json={
            "model": "support-bot", "user": "u2", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == {
            "message": "this proxy worker holds 1 requests already (proxy.max_concurrent_requests); retry in a moment",
            "type": "server_overloaded", "param": None, "code": "worker_overloaded"}
        slow.sendall(body[10:])
        answer = slow.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    # waiting for the upstream does not count: slow answers in flight together are all served (each sent
    # 50 ms after the one before, while the others wait for the upstream's 400 ms)
    import concurrent.futures

    def slow_answer(i: int) -> int:
        time.sleep(0.05 * i)
        return httpx.post(proxy.url + "/v1/chat/completions", timeout=10, json={
            "model": "support-bot", "user": f"w{i}", "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"stub_latency_ms": "400"}}).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(slow_answer, range(4)))
    assert codes == [200] * 4
    metrics = httpx.get(proxy.url + "/metrics").text
    assert "splitwatch_requests_refused_total 1.0" in metrics


def test_a_hold_counts_its_request_and_calls_back_once_when_its_client_is_lost() -> None:
    from splitwatch.service.proxy.worker_load import Hold, WorkerLoad

    load = WorkerLoad()
    calls: list[str] = []
    kept, gone = Hold(load), Hold(load)
    assert load.held == 2
    kept.pause()  # waiting for its upstream: not the worker's load
    kept.pause()
    assert load.held == 1
    kept.resume()
    assert load.held == 2
    gone.on_lost = lambda: calls.append("lost")
    gone.pause()
    gone.lose()
    gone.lose()  # the protocol may see the loss after the response's end: no second call, no drift
    gone.resume()  # the request path resumes after its upstream's wait: an ended hold stays uncounted
    assert (calls, gone.lost, load.held) == (["lost"], True, 1)
    kept.end()
    kept.lose()
    assert load.held == 0


@pytest.mark.parametrize(("status", "content_type"), [
    (200, "application/json"), (200, "text/plain"), (200, "text/html; Charset=ISO-8859-1"),
    (201, "text/event-stream"), (204, "application/json"), (304, "text/plain"),
    (404, "application/json; charset=utf-8"), (502, "application/x-ndjson")])
def test_a_raw_response_sends_what_starlettes_response_sends(status, content_type) -> None:
    from starlette.responses import Response

    from splitwatch.service.proxy.raw_response import RawResponse

    headers = {"x-splitwatch-experiment": "support-ft", "x-splitwatch-arm": "finetuned",
               "x-splitwatch-request-id": "0f6b1a9e-2c1d-4e8f-9a7b-3c2d1e0f9a8b", "x-splitwatch-excluded": "paused"}
    body = '{"id":"cmpl-1","choices":[{"text":"é"}]}'.encode()

    def sent(response: Response) -> list[dict]:
        messages: list[dict] = []

        async def send(message: dict) -> None:
            messages.append(message)

        asyncio.run(response({"type": "http"}, None, send))
        return messages

    assert sent(RawResponse(body, status, headers, content_type)) == sent(
        Response(body, status_code=status, headers=headers, media_type=content_type))

"""The stream path byte for byte, and a worker that refuses streams past its limit.

The upstream here is a scripted SSE server on a real port (raw asyncio, HTTP/1.1 chunked): it sends
a fixed body in pieces of a size the request chooses, with LF or CRLF line ends, and the usage chunk
only when the request asked for it, as an OpenAI-compatible server does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from itertools import pairwise

import httpx
import orjson
import pytest

from splitwatch.service.local.processes import StubModel
from tests.harness import experiment_config

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def script(crlf: bool, usage: bool) -> bytes:
    """Return the SSE body the scripted upstream sends (the usage chunk only when asked for)."""
    nl = "\r\n" if crlf else "\n"
    chunks = [{"id": "c1", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": word}, "finish_reason": None}]}
        for word in ("Hé", " là", " \u2014 ok")]
    chunks.append({"id": "c1", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        chunks.append({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
    events = [f"data: {orjson.dumps(c).decode()}{nl}{nl}" for c in chunks]
    events.insert(1, f": keep-alive comment{nl}{nl}")
    return ("".join(events) + f"data: [DONE]{nl}{nl}").encode()


class ScriptedUpstream:
    """An OpenAI-compatible SSE server that replays :func:`script` in pieces of ``metadata.split`` bytes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.requests: list[dict] = []
        ready = threading.Event()

        async def start() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        ready.wait(10)

    @staticmethod
    async def read_request(reader: asyncio.StreamReader) -> dict:
        """Return the next request's JSON body (its head read and skipped)."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return orjson.loads(await reader.readexactly(length))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                body = await self.read_request(reader)
                self.requests.append(body)
                meta = body.get("metadata") or {}
                split, crlf = int(meta.get("split", 1)), meta.get("crlf") == "1"
                asked = bool((body.get("stream_options") or {}).get("include_usage"))
                data = script(crlf, asked)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for i in range(0, len(data), split):
                    piece = data[i:i + split]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def base_url(self) -> str:
        """Return the OpenAI base URL of this upstream."""
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    yield ScriptedUpstream()


def _stream(url: str, split: int, crlf: bool, include_usage: bool) -> bytes:
    body: dict = {"model": "support-bot", "user": "u-bytes", "stream": True,
                  "messages": [{"role": "user", "content": "hi"}],
                  "metadata": {"split": str(split), "crlf": "1" if crlf else "0"}}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        return b"".join(r.iter_raw())


def _completion_tokens(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("splitwatch_tokens_total{") and 'kind="completion"' in line)


def test_streams_pass_byte_for_byte_at_every_split(start_proxy, scripted) -> None:
    class Stub:  # the arms' upstream: the scripted server
        base_url = scripted.base_url

    proxy = start_proxy(experiment=experiment_config(Stub, Stub))
    whole = len(script(True, True))
    tokens = 0.0
    for crlf in (False, True):
        for include_usage in (False, True):  # the client asked for usage, or the proxy added the request
            expected = script(crlf, include_usage)
            for split in [*range(1, 41), 64, 97, 128, 256, whole]:
                got = _stream(proxy.url, split, crlf, include_usage)
                assert got == expected, (split, crlf, include_usage)
                tokens += USAGE["completion_tokens"]
    # every stream asked the upstream for usage (the proxy adds the request) and counted it
    assert all((r.get("stream_options") or {}).get("include_usage") for r in scripted.requests)
    assert _completion_tokens(proxy.url) == tokens


def test_streams_past_the_limit_are_refused_at_once_and_open_ones_continue(start_proxy, tmp_path) -> None:
    slow = StubModel(tmp_path, "slow", "--token-delay-ms", "40", "--completion-tokens", "60")  # ~2.4 s each
    slow.start()
    proxy = start_proxy(experiment=experiment_config(slow, slow), max_concurrent_streams=4)

    async def run() -> tuple[list[tuple[int, float, list[float]]], list[httpx.Response], float]:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
            first_chunk = asyncio.Event()
            opened: list[int] = []

            async def hold(i: int) -> tuple[int, float, list[float]]:
                body = {"model": "support-bot", "user": f"open-{i}", "stream": True,
                        "messages": [{"role": "user", "content": "tell me a story"}]}
                arrivals: list[float] = []
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_raw():
                        arrivals.append(time.monotonic())
                        if len(arrivals) == 1:
                            opened.append(i)
                            if len(opened) == 4:
                                first_chunk.set()
                    return r.status_code, arrivals[-1] - arrivals[0], arrivals

            holders = [asyncio.create_task(hold(i)) for i in range(4)]
            await asyncio.wait_for(first_chunk.wait(), 20)
            t0 = time.monotonic()
            refused = [await client.post("/v1/chat/completions", json={
                "model": "support-bot", "user": f"extra-{i}", "stream": True,
                "messages": [{"role": "user", "content": "me too"}]}) for i in range(3)]
            refused_s = time.monotonic() - t0
            plain = await client.post("/v1/chat/completions", json={  # not a stream: served
                "model": "support-bot", "user": "plain", "messages": [{"role": "user", "content": "hi"}]})
            assert plain.status_code == 200
            return [await h for h in holders], refused, refused_s

    held, refused, refused_s = asyncio.run(run())
    for r in refused:
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "too_many_streams" and r.json()["error"]["type"] == "server_overloaded"
    assert refused_s < 1.0  # at once, not after a stream ended (each lasts about 2.4 s)
    for status, duration, arrivals in held:
        assert status == 200 and duration > 1.5
        gaps = [b - a for a, b in pairwise(arrivals)]
        assert max(gaps) < 1.0  # the open streams were not disturbed
    text = httpx.get(proxy.url + "/metrics").text
    assert "splitwatch_streams_refused_total 3.0" in text
    assert "splitwatch_open_streams 0.0" in text  # every slot given back
    # once they ended, a new stream is taken again
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=30, json={
            "model": "support-bot", "user": "later", "stream": True,
            "messages": [{"role": "user", "content": "again"}]}) as r:
        assert r.status_code == 200 and b"[DONE]" in b"".join(r.iter_raw())
    slow.stop()

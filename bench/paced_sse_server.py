"""A light paced SSE model server for the stream benchmarks: OpenAI chat-completion chunks, one per token.

The stub model (``splitwatch.service.local.stub_model``) paces each stream with its own ``asyncio.sleep``
and writes through uvicorn's ASGI ``send``: about 100 µs of Python per chunk, so on the benchmark's
second core it saturated near 9,000-10,000 chunks/s, which is where the proxy's own limit must be
measured. This server writes every chunk from one ``call_at`` timer callback per token directly to the
transport (no task, no ASGI layer), so it carries several times that on one core. Both the direct and the
proxied runs read from it, so the ratio between them stays honest.

Requests: ``POST /v1/chat/completions`` with a JSON body, HTTP/1.1 keep-alive (the proxy reuses its
upstream connections). The answer is ``--tokens`` chunks, ``--token-delay-ms`` apart (the first at once),
then a ``finish_reason`` chunk, the usage chunk when ``stream_options.include_usage`` was asked for, and
``data: [DONE]``, in HTTP chunked encoding.

Usage: python bench/paced_sse_server.py --port P [--tokens 200] [--token-delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
import uvloop

HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class PacedStream(asyncio.Protocol):
    """One client connection: reads requests one after another, answers each with a paced SSE stream."""

    def __init__(self, tokens: int, delay_s: float) -> None:
        self.tokens = tokens
        self.delay_s = delay_s
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next_request()

    def _next_request(self) -> None:
        if self.busy:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        length = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(self.buf) < end + 4 + length:
            return
        body = orjson.loads(self.buf[end + 4:end + 4 + length])
        self.buf = self.buf[end + 4 + length:]
        self._answer(body, close=b"connection: close" in head)

    def _answer(self, body: dict, close: bool) -> None:
        self.busy = True
        assert self.transport is not None
        model = body.get("model", "m")
        opts = body.get("stream_options")
        usage = isinstance(opts, dict) and opts.get("include_usage") is True
        prefix = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":' \
                 + orjson.dumps(model) + b',"choices":[{"index":0,"delta":{"content":"'
        chunk = [_frame(prefix + b"tok%d " % i + b'"},"finish_reason":null}]}\n\n') for i in range(3)]
        tail = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":' \
               + orjson.dumps(model) + b',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        if usage:
            tail += b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"choices":[],' \
                    b'"usage":{"prompt_tokens":1,"completion_tokens":%d,"total_tokens":%d}}\n\n' \
                    % (self.tokens, self.tokens + 1)
        tail = _frame(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.transport.write(HEAD)
        start = time.monotonic()
        if not self.delay_s:
            self.transport.write(b"".join(chunk[i % 3] for i in range(self.tokens)) + tail)
            self._done(close)
            return

        def tick(i: int) -> None:
            if self.transport is None:
                return
            self.transport.write(chunk[i % 3])
            if i + 1 < self.tokens:
                self.timer = self.loop.call_at(start + (i + 1) * self.delay_s, tick, i + 1)
            else:
                self.transport.write(tail)
                self._done(close)

        tick(0)

    def _done(self, close: bool) -> None:
        self.busy = False
        if close and self.transport is not None:
            self.transport.close()
            return
        self._next_request()


async def serve(port: int, tokens: int, delay_s: float) -> None:
    """Serve paced streams on 127.0.0.1:``port`` until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: PacedStream(tokens, delay_s), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--token-delay-ms", type=float, default=20.0)
    args = ap.parse_args()
    uvloop.run(serve(args.port, args.tokens, args.token_delay_ms / 1000))


if __name__ == "__main__":
    main()

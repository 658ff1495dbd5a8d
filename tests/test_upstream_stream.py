"""The stream path's upstream client (service/proxy/upstream_stream.py) against real sockets.

Each test runs a small scripted HTTP server on loopback in the test's own event loop and drives a
:class:`StreamPool` directly: framing (chunked, content-length, until close), keep-alive reuse, the
retry of a request sent on an idle connection the upstream had just closed, every timeout, the
connection limit, back-pressure on a slow reader, and that every failure is httpx's exception class
the proxy maps to a status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from splitwatch.service.config import UpstreamConfig
from splitwatch.service.proxy.upstream_stream import HIGH_WATER, StreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = {"content-type": "application/json", "x-request-id": "r1"}


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Return one request's head and body from the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await reader.readexactly(length)


async def serve(handler: Handler) -> tuple[asyncio.Server, UpstreamConfig]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, UpstreamConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=2,
                                  connect_timeout_s=1, max_connections=4)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_chunked_body_is_returned_whole_and_the_connection_is_reused() -> None:
    connections: list[int] = []
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            try:
                requests.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(OK_HEAD)
            for piece in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")

    async def main() -> None:
        server, up = await serve(handler)
        pool = StreamPool(up)
        for _ in range(3):
            resp = await pool.open("/chat/completions", b'{"a": 1}', HEADERS, up.timeout_s)
            assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
            assert await resp.aread() == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        assert len(connections) == 1  # kept alive and reused
        assert pool.busy == 0 and len(pool.idle) == 1
        head = requests[0].split(b"\r\n\r\n")[0].decode()
        assert head.startswith("POST /v1/chat/completions HTTP/1.1")
        assert "content-length: 8" in head and "x-request-id: r1" in head
        assert requests[0].endswith(b'{"a": 1}')
        pool.close()
        server.close()

    run(main())


def test_content_length_and_close_delimited_bodies() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            if b"close-delimited" in body:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                             b"data: x\n\n")
                await writer.drain()
                writer.close()
                return
            writer.write(b'HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n'
                         b'content-length: 11\r\n\r\n{"error":1}')
            await writer.drain()

    async def main() -> None:
        server, up = await serve(handler)
        pool = StreamPool(up)
        resp = await pool.open("/x", b"{}", HEADERS, up.timeout_s)
        assert resp.status_code == 429 and await resp.aread() == b'{"error":1}'
        resp = await pool.open("/x", b'"close-delimited"', HEADERS, up.timeout_s)
        assert await resp.aread() == b"data: x\n\n"  # its end is the connection's close, not an error
        assert pool.busy == 0
        pool.close()
        server.close()

    run(main())


def test_an_idle_connection_the_upstream_closed_is_replaced_once() -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(OK_HEAD + chunked(b"data: ok\n\n"))
        await writer.drain()
        # keep-alive promised, but the server drops the connection as soon as the next request arrives
        # (the race of a keep-alive expiry meeting a reuse)
        await reader.read(1)
        writer.transport.abort()

    async def main() -> None:
        server, up = await serve(handler)
        pool = StreamPool(up)
        first = await pool.open("/x", b"{}", HEADERS, up.timeout_s)
        assert await first.aread() == b"data: ok\n\n" and len(pool.idle) == 1
        second = await pool.open("/x", b"{}", HEADERS, up.timeout_s)  # sent on the dying connection, then again
        assert await second.aread() == b"data: ok\n\n"
        assert served == 2 and pool.busy == 0
        pool.close()
        server.close()

    run(main())


def test_failures_are_httpx_errors_and_give_the_slot_back() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        if b"silent" in body:
            await asyncio.sleep(5)
        elif b"garbage" in body:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif b"cut" in body:
            writer.write(OK_HEAD + b"9\r\ndata: 1\n\n\r\n")
            await writer.drain()
            writer.transport.abort()
        elif b"stall" in body:
            writer.write(OK_HEAD + b"9\r\ndata: 1\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(5)
        elif b"hangup" in body:
            writer.transport.abort()
        await writer.drain()

    async def main() -> None:
        server, up = await serve(handler)
        up = up.model_copy(update={"timeout_s": 0.3})
        pool = StreamPool(up)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(httpx.ReadTimeout):  # no headers within timeout_s
            await pool.open("/x", b'"silent"', HEADERS, up.timeout_s)
        assert 0.25 < loop.time() - t0 < 1.0
        with pytest.raises(httpx.RemoteProtocolError):
            await pool.open("/x", b'"garbage"', HEADERS, up.timeout_s)
        with pytest.raises(httpx.RemoteProtocolError):  # a new connection closed before any answer
            await pool.open("/x", b'"hangup"', HEADERS, up.timeout_s)
        resp = await pool.open("/x", b'"cut"', HEADERS, up.timeout_s)
        assert await resp.read() == b"data: 1\n\n"  # what arrived is delivered before the error
        with pytest.raises(httpx.ReadError):
            await resp.read()
        resp = await pool.open("/x", b'"stall"', HEADERS, up.timeout_s)
        assert await resp.read() == b"data: 1\n\n"
        t0 = loop.time()
        with pytest.raises(httpx.ReadTimeout):  # nothing for timeout_s in the middle of the body
            await resp.read()
        assert 0.25 < loop.time() - t0 < 1.0
        assert pool.busy == 0
        closed = StreamPool(up.model_copy(update={"base_url": f"http://127.0.0.1:{_closed_port()}/v1"}))
        with pytest.raises(httpx.ConnectError):
            await closed.open("/x", b"{}", HEADERS, up.timeout_s)
        assert closed.busy == 0
        pool.close()
        server.close()

    run(main())


def test_connections_past_max_connections_wait_then_time_out() -> None:
    release = asyncio.Event

    async def main() -> None:
        gate = release()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    await read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(OK_HEAD)
                await writer.drain()
                await gate.wait()
                writer.write(chunked(b"data: done\n\n"))
                await writer.drain()

        server, up = await serve(handler)
        up = up.model_copy(update={"max_connections": 2, "timeout_s": 0.3})
        pool = StreamPool(up)
        held = [await pool.open("/x", b"{}", HEADERS, 5) for _ in range(2)]
        assert pool.busy == 2
        with pytest.raises(httpx.PoolTimeout):
            await pool.open("/x", b"{}", HEADERS, 0.3)
        waiting = asyncio.ensure_future(pool.open("/x", b"{}", HEADERS, 5))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        gate.set()
        assert [await r.aread() for r in held] == [b"data: done\n\n"] * 2
        third = await waiting  # a slot came free
        assert await third.aread() == b"data: done\n\n"
        assert pool.busy == 0
        pool.close()
        server.close()

    run(main())


def test_a_slow_reader_pauses_the_upstream_connection() -> None:
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(OK_HEAD)
        piece = b"x" * 65536
        for _ in range(200):  # 12.5 MiB, far past what the proxy buffers
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            sent += len(piece)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        server, up = await serve(handler)
        pool = StreamPool(up)
        resp = await pool.open("/x", b"{}", HEADERS, 5)
        await asyncio.sleep(0.5)  # the reader reads nothing: the upstream must be held back
        assert resp._buffered < HIGH_WATER + 2 * 65536 + 16
        assert sent < 8 * 1024 * 1024  # socket buffers hold some, not all 12.5 MiB
        total = 0
        while data := await resp.read():
            total += len(data)
        assert total == 200 * 65536
        pool.close()
        server.close()

    run(main())


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

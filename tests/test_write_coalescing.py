"""The server's write coalescing (service/proxy/write_coalescing.py): a response's head leaves with its body.

A recording transport stands for the connection's; the loops are asyncio's and uvloop's (the server's).
The answers' bytes through the real server are checked by tests/test_whole_path.py and test_stream_path.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from splitwatch.service.proxy.http_limits import bounded_httptools_protocol
from splitwatch.service.proxy.write_coalescing import CoalescingTransport


class RecordingTransport:
    """A transport that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False
        self.buffered = 7

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, chunks: tuple[bytes, ...]) -> None:
        self.calls.append(("writelines", chunks))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


def _run(body: Any) -> None:
    for new_loop in (asyncio.new_event_loop, uvloop.new_event_loop):
        loop = new_loop()
        try:
            loop.run_until_complete(body(loop))
        finally:
            loop.close()


def _coalescing(loop: asyncio.AbstractEventLoop) -> tuple[RecordingTransport, CoalescingTransport]:
    """Return a recording transport and the coalescing transport in front of it."""
    raw = RecordingTransport()
    return raw, CoalescingTransport(raw, loop)  # type: ignore[arg-type]


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_a_head_leaves_with_the_next_write_at_once() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        raw, t = _coalescing(loop)
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert raw.calls == []  # the head is kept...
        assert t.get_write_buffer_size() == 7 + 19
        t.write(b"")  # (nothing to send)
        t.write(b"body")  # ...and leaves with the body, in the same step
        assert raw.calls == [("writelines", (b"HTTP/1.1 200 OK\r\n\r\n", b"body"))]
        t.writelines([b"more", b"chunks"])  # writes that follow no head go straight through
        assert raw.calls[1:] == [("write", b"more"), ("write", b"chunks")]
        await _next_turn()  # the callback scheduled with the head finds nothing kept
        assert len(raw.calls) == 3
        assert t.get_write_buffer_size() == 7

    _run(body)


def test_a_head_no_write_follows_leaves_alone_before_the_next_poll() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        raw, t = _coalescing(loop)
        t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")  # a stream's head
        await _next_turn()
        assert raw.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")]
        t.write(b"data: {}\n\n")  # its first chunk, later: at once
        assert raw.calls[1:] == [("write", b"data: {}\n\n")]

    _run(body)


def test_close_sends_the_kept_head_first_abort_drops_it() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        raw, t = _coalescing(loop)
        t.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        t.close()
        assert raw.calls == [("write", b"HTTP/1.1 503 Service Unavailable\r\n\r\n"), ("close", None)]
        await _next_turn()  # the scheduled callback finds nothing left
        assert len(raw.calls) == 2

        raw2, t2 = _coalescing(loop)
        t2.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t2.write_eof()
        assert raw2.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\n"), ("write_eof", None)]
        t2.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t2.abort()
        await _next_turn()
        assert raw2.calls[2:] == [("abort", None)]

    _run(body)


def test_a_closing_connection_drops_the_kept_head_and_the_rest_is_the_transports() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        raw, t = _coalescing(loop)
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        raw.closing = True  # the client went away in this turn
        await _next_turn()
        assert raw.calls == []
        assert t.is_closing() is True
        assert t.get_extra_info("peername") == ("127.0.0.1", 5)
        with pytest.raises(AttributeError):
            t.no_such_method  # noqa: B018

    _run(body)


def test_the_servers_protocol_writes_through_the_coalescing_transport() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        from uvicorn.config import Config
        from uvicorn.server import ServerState

        protocol_class = bounded_httptools_protocol(8192, 5.0)
        config = Config(app=None, http=protocol_class)  # type: ignore[arg-type]
        config.load_app = lambda: None  # type: ignore[method-assign]
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        raw = RecordingTransport()
        protocol.connection_made(raw)  # type: ignore[arg-type]
        assert isinstance(protocol.transport, CoalescingTransport)
        protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-big: " + b"y" * 9000 + b"\r\n\r\n")
        # the 431 answer and the close: one call for the answer, then the close
        kinds = [kind for kind, _ in raw.calls]
        assert kinds == ["write", "close"]
        assert raw.calls[0][1].startswith(b"HTTP/1.1 431 ")
        protocol.connection_lost(None)

    _run(body)

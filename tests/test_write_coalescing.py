"""The server's write coalescing (service/proxy/write_coalescing.py): writes made in one loop turn leave in one call.

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

    def writelines(self, chunks: list[bytes]) -> None:
        self.calls.append(("writelines", list(chunks)))

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


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_in_one_call_and_before_the_next_poll() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        raw = RecordingTransport()
        t = CoalescingTransport(raw, loop)  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"")  # nothing to send: not kept
        t.write(b"body")
        assert raw.calls == []  # kept until the turn ends
        assert t.get_write_buffer_size() == 7 + 19 + 4
        await _next_turn()
        assert raw.calls == [("writelines", [b"HTTP/1.1 200 OK\r\n\r\n", b"body"])]
        t.writelines([b"one"])  # a later turn: its own call; one chunk is a plain write
        await _next_turn()
        assert raw.calls[1:] == [("write", b"one")]
        assert t.get_write_buffer_size() == 7

    _run(body)


def test_close_sends_what_is_kept_first_abort_drops_it() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        raw = RecordingTransport()
        t = CoalescingTransport(raw, loop)  # type: ignore[arg-type]
        t.write(b"a")
        t.write(b"b")
        t.close()
        assert raw.calls == [("writelines", [b"a", b"b"]), ("close", None)]
        await _next_turn()  # the scheduled flush finds nothing left
        assert len(raw.calls) == 2

        raw2 = RecordingTransport()
        t2 = CoalescingTransport(raw2, loop)  # type: ignore[arg-type]
        t2.write(b"x")
        t2.write_eof()
        assert raw2.calls == [("write", b"x"), ("write_eof", None)]
        t2.write(b"lost")
        t2.abort()
        await _next_turn()
        assert raw2.calls[2:] == [("abort", None)]

    _run(body)


def test_a_closing_connection_drops_what_is_kept_and_the_rest_is_the_transports() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        raw = RecordingTransport()
        t = CoalescingTransport(raw, loop)  # type: ignore[arg-type]
        t.write(b"late")
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

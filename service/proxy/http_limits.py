"""Limits of the HTTP server layer that uvicorn does not offer for its httptools parser.

uvicorn bounds concurrency (``limit_concurrency``) and idle keep-alive time, both set from
``proxy.*`` in :mod:`splitwatch.service.proxy.server`. It does not bound the size of a request's
line and headers (a 1 MB header was accepted), nor how long a client may take to send them (a
connection with partial headers was held for 15 s and more). :func:`bounded_httptools_protocol`
returns uvicorn's httptools protocol with both limits:

- request line and headers larger than ``max_header_bytes`` get ``431`` and the connection is closed;
- a connection that has not sent a complete request line and headers within ``header_timeout_s`` of
  connecting (or of starting the request, on a kept-alive connection) gets ``408`` and is closed.

Both answers carry an OpenAI error body. Reading a body slowly is bounded separately, in
:func:`splitwatch.service.proxy.request_body.read_limited_body`. This subclasses uvicorn's protocol
(callbacks ``on_message_begin``, ``on_url``, ``on_header``, ``on_headers_complete``): the
behaviour is checked against the installed uvicorn by tests/test_hardening.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import metrics
from .errors import error_body
from .worker_load import HOLD, Hold
from .write_coalescing import CoalescingTransport

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


# Past the size limits on purpose (pyproject.toml):
# one small class built in a closure (the limits are its constants, read on the hot path);
# McCabe adds up its eight short methods
def bounded_httptools_protocol(max_header_bytes: int, header_timeout_s: float) -> type[HttpToolsProtocol]:  # noqa: C901
    """Return uvicorn's httptools protocol class with a bound on header size and on header time."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_bytes = 0
            self._header_timer: asyncio.TimerHandle | None = None
            self._rejected = False
            self._hold: Hold | None = None  # the current request's place in the worker's load

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            # an answer's head and body in one write (:mod:`.write_coalescing`)
            super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            hold, self._hold = self._hold, None
            if hold is not None:
                hold.lose()  # before uvicorn's own handling: the request path is told first
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._rejected:
                super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            self._arm_header_timer()

        def on_url(self, url: bytes) -> None:
            if self._count(len(url)):
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._count(len(name) + len(value) + 4):
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._cancel_header_timer()
            if not self._rejected:
                self._end_hold()
                self._hold = self.scope[HOLD] = Hold()  # type: ignore[literal-required]
                super().on_headers_complete()

        def on_response_complete(self) -> None:
            self._end_hold()
            super().on_response_complete()

        def _end_hold(self) -> None:
            hold, self._hold = self._hold, None
            if hold is not None:
                hold.end()

        def on_body(self, body: bytes) -> None:
            if not self._rejected:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._rejected:
                super().on_message_complete()

        # -- the limits ------------------------------------------------------------------------
        def _count(self, n: int) -> bool:
            """Add ``n`` bytes to the request's header size; reject the request past the limit."""
            if self._rejected:
                return False
            self._header_bytes += n
            if self._header_bytes > max_header_bytes:
                self._reject(431, f"request line and headers exceed {max_header_bytes} bytes",
                             "headers_too_large")
                return False
            return True

        def _arm_header_timer(self) -> None:
            if self._header_timer is None and header_timeout_s > 0:
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served: its headers were complete
            self._reject(408, f"request line and headers not received within {header_timeout_s:g} s",
                         "request_timeout")

        def _reject(self, status: int, message: str, code: str) -> None:
            self._rejected = True
            self._cancel_header_timer()
            metrics.HTTP_REJECTED.labels(code).inc()
            if self.transport.is_closing():
                return
            body = error_body(message, "invalid_request_error", None, code)
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)) + body)
            self.transport.close()

    return BoundedHttpToolsProtocol

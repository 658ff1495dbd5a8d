"""The upstream side of the request path, streams and whole answers: HTTP/1.1 over asyncio protocols,
parsed by httptools.

Why not httpx here (it serves shadow calls, passthrough traffic and ``splitwatch eval``): a relayed stream
is thousands of small reads, and through httpx each read cost a cancel scope, a socket-readability
check and h11's pure-Python chunked decoding, about a third of a saturated worker's time
(docs/benchmarks.md, streams); a whole answer paid for httpx's request and response objects and
h11's parsing on every call (issue 32 moved it here; with the direct dispatch of ``app.ProxyApp`` a
worker answers 3.7 times the requests per second). This client reads with uvicorn's own C parser
(httptools) in ``data_received``, hands the body bytes to the relay without copying, and costs one
future per wake-up of the relay, however many chunks arrived meanwhile. It is deliberately small:
POST with a JSON body, keep-alive, a bounded pool, timeouts; nothing else (no redirects, cookies,
proxies, compression).

Errors are httpx's exception classes, so the proxy maps every failure to the same status and
``error`` reason whichever client served the request: ``ConnectError``/``ConnectTimeout``,
``PoolTimeout``, ``ReadTimeout`` (no byte within ``timeout_s``), ``RemoteProtocolError`` (no valid
answer), ``ReadError`` (the connection broke during the body).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httptools
import httpx

from ..config import UpstreamConfig

HIGH_WATER = 256 * 1024
"""Body bytes buffered for a client that reads slowly before the upstream connection stops reading."""


class BodyInterrupted(Exception):
    """The upstream sent its status and headers, then broke off (or broke the protocol) before the body's end."""

    def __init__(self, cause: httpx.HTTPError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class UpstreamResponse:
    """One upstream answer: status and headers once :meth:`StreamPool.open` returns, then its body.

    The parts of ``httpx.Response`` the proxy uses (``status_code``, ``headers``, ``aread``,
    ``aiter_raw``, ``aclose``), plus :meth:`read`, the relay's one call per wake-up.
    """

    __slots__ = ("_buffered", "_chunks", "_conn", "_done", "_end_waiter", "_error", "_headers_ready", "_last_data",
                 "_loop", "_paused", "_release", "_timeout_s", "_timer", "_waiter", "headers", "headers_received",
                 "status_code")

    def __init__(self, conn: _Connection, timeout_s: float) -> None:
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        self._timeout_s = timeout_s
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self._headers_ready: asyncio.Future[None] = self._loop.create_future()
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._end_waiter: asyncio.Future[None] | None = None  # set by :meth:`whole`: woken at the end only
        self._last_data = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._release: Callable[[], None] | None = None  # gives the pool's slot back, once
        self.headers_received = False

    # -- fed by the connection -------------------------------------------------------------------
    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._last_data = self._loop.time()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._buffered > HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause_reading()

    def _on_end(self, error: Exception | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        self._conn = None
        if not self._headers_ready.done():
            self._headers_ready.set_exception(error or httpx.RemoteProtocolError(
                "the upstream closed the connection without sending a response"))
            self._headers_ready.exception()  # retrieved: open() raises it, or has already given up
        for waiter in (self._waiter, self._end_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
        release, self._release = self._release, None
        if release is not None:
            release()

    # -- read by the relay -----------------------------------------------------------------------
    async def read(self) -> bytes:
        """Return the body bytes received since the last call (waiting for some), or b"" at the end.

        Raises ``httpx.ReadTimeout`` when nothing arrived for ``timeout_s``, ``httpx.ReadError``
        when the connection broke before the body's end (after every byte received was returned).
        """
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            self._waiter = self._loop.create_future()
            if self._timer is None:
                self._timer = self._loop.call_at(self._last_data + self._timeout_s, self._check_timeout)
            await self._waiter
            self._waiter = None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if self._conn is not None:
                self._conn.resume_reading()
        return data

    def _check_timeout(self) -> None:
        """Fail the read when nothing arrived for ``timeout_s``; else look again when it would be so."""
        self._timer = None
        if self._done:
            return
        due = self._last_data + self._timeout_s
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        conn = self._conn
        self._on_end(httpx.ReadTimeout(f"no data from the upstream within {self._timeout_s:g} s"))
        if conn is not None:
            conn.abort()

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives (as ``httpx.Response.aiter_raw`` does)."""
        while data := await self.read():
            yield data

    async def whole(self) -> bytes:
        """Return the whole body once the answer has ended: one wake-up, however many reads it took.

        Raises what ended it early: ``httpx.RemoteProtocolError`` (no valid answer, or invalid HTTP) or
        ``httpx.ReadError`` (the connection broke). Cancelled, it aborts the connection. No timer of its
        own: the caller bounds the whole call (``completions._upstream_wait``).
        """
        if not self._done:
            self._end_waiter = self._loop.create_future()
            try:
                await self._end_waiter
            except BaseException:
                self.close()
                raise
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def aread(self) -> bytes:
        """Return the whole body."""
        parts = [data async for data in self.aiter_raw()]
        return b"".join(parts)

    async def aclose(self) -> None:
        """Stop reading: a finished answer leaves its connection pooled; an unfinished one is aborted."""
        self.close()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        conn = self._conn
        if not self._done:
            self._on_end(httpx.ReadError("closed by the proxy"))
            if conn is not None:
                conn.abort()
        self._chunks.clear()


class _Connection(asyncio.Protocol):
    """One upstream connection; it carries one response at a time."""

    def __init__(self, pool: StreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.received = False  # any byte of the current response
        self.framed = False  # the response has a length or chunked encoding (else it ends at close)
        self.idle_since = 0.0
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # an idle connection must stay silent
            self.abort()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._end(httpx.RemoteProtocolError(f"invalid HTTP from the upstream: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        resp = self.response
        if resp is not None:
            if resp.headers_received and not self.framed:
                self._end(None)  # a body delimited by the connection's close: that was its end
            else:
                self._end(httpx.ReadError("the upstream closed the connection") if resp.headers_received
                          else httpx.RemoteProtocolError("the upstream closed the connection without answering"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        key = name.decode("latin-1").lower()
        if key in ("content-length", "transfer-encoding"):
            self.framed = True
        self.response.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        resp.status_code = self.parser.get_status_code()
        resp.headers_received = True
        if not resp._headers_ready.done():
            resp._headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._on_body(body)

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        self._end(None)
        if keep and not self.closed:
            self.pool._give_back(self)
        else:
            self.abort()

    # helpers
    def _end(self, error: Exception | None) -> None:
        resp, self.response = self.response, None
        if resp is not None:
            resp._on_end(error)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close the connection at once (whatever it was doing)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()


class StreamPool:
    """Keep-alive connections to one upstream, at most ``max_connections`` carrying answers at once."""

    def __init__(self, up: UpstreamConfig) -> None:
        url = urlsplit(up.base_url)
        self.loop = asyncio.get_running_loop()
        self.host = url.hostname or "localhost"
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.host_header = url.netloc.rsplit("@", 1)[-1]
        self.path_prefix = url.path.rstrip("/")
        self.query = f"?{url.query}" if url.query else ""
        self.connect_timeout_s = up.connect_timeout_s
        self.keepalive_expiry_s = up.keepalive_expiry_s
        self.max_connections = up.max_connections
        self.busy = 0
        self._slot_waiters: list[asyncio.Future[None]] = []
        self.idle: list[_Connection] = []
        self._ssl = ssl.create_default_context() if self.tls else None

    async def open(self, path: str, payload: bytes, headers: dict[str, str], timeout_s: float) -> UpstreamResponse:
        """Send ``POST path`` with ``payload`` and ``headers``; return the response once its status and
        headers arrived.

        Raises httpx's ``PoolTimeout``, ``ConnectError``, ``ConnectTimeout``, ``ReadTimeout`` (no
        headers within ``timeout_s``) or ``RemoteProtocolError``. A reused connection that the upstream
        closed before answering is replaced once by a new one (the request never reached a handler).
        The response holds one of the pool's ``max_connections`` slots until it ends.
        """
        head = self._request_head(path, len(payload), headers)
        await self._acquire_slot(timeout_s)
        try:
            resp = await self._send(head + payload, timeout_s)
        except BaseException:
            self._release_slot()
            raise
        if resp._done:
            self._release_slot()  # answered and finished before we got here: nothing left to hold
        else:
            resp._release = self._release_slot
        return resp

    async def fetch(self, path: str, payload: bytes, headers: dict[str, str],
                    timeout_s: float) -> tuple[UpstreamResponse, bytes]:
        """Send ``POST path`` and return the response with its whole body, awaited once (whole answers).

        Raises as :meth:`open` does, without its timeout on the headers: the caller bounds the whole
        call. :class:`BodyInterrupted` wraps a failure after the status and headers arrived (a body cut
        short or invalid). The connection goes back to the pool when the answer ended cleanly; it is
        aborted otherwise (cancelled included).
        """
        request = self._request_head(path, len(payload), headers) + payload
        await self._acquire_slot(timeout_s)
        try:
            for attempt in (0, 1):
                conn, resp, reused = await self._write(request, timeout_s, reuse=attempt == 0)
                try:
                    return resp, await resp.whole()
                except httpx.RemoteProtocolError as exc:
                    if reused and not conn.received:
                        continue  # an idle connection the upstream had just closed: once more, on a new one
                    if resp.headers_received:
                        raise BodyInterrupted(exc) from exc
                    raise
                except httpx.ReadError as exc:
                    raise BodyInterrupted(exc) from exc
            raise AssertionError("unreachable: the second attempt returns or raises")
        finally:
            self._release_slot()

    async def _send(self, request: bytes, timeout_s: float) -> UpstreamResponse:
        for attempt in (0, 1):
            conn, resp, reused = await self._write(request, timeout_s, reuse=attempt == 0)
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(resp._headers_ready)
            except TimeoutError:
                resp.close()
                raise httpx.ReadTimeout(f"no answer from the upstream within {timeout_s:g} s") from None
            except httpx.RemoteProtocolError:
                if reused and not conn.received:
                    continue  # an idle connection the upstream had just closed: once more, on a new one
                raise
            except BaseException:
                resp.close()
                raise
            return resp
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _write(self, request: bytes, timeout_s: float, reuse: bool) -> tuple[_Connection, UpstreamResponse, bool]:
        """Write ``request`` on an idle connection (with ``reuse``, when one is left) or a new one; return the
        connection, the response it will carry, and whether the connection was reused (the callers' one
        retry is for a reused connection the upstream had closed)."""
        conn = self._idle_connection() if reuse else None
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        resp = UpstreamResponse(conn, timeout_s)
        conn.response, conn.received, conn.framed = resp, False, False
        assert conn.transport is not None
        conn.transport.write(request)
        return conn, resp, reused

    def _request_head(self, path: str, length: int, headers: dict[str, str]) -> bytes:
        lines = [f"POST {self.path_prefix}{path}{self.query} HTTP/1.1", f"host: {self.host_header}",
                 f"content-length: {length}"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise httpx.LocalProtocolError(f"the upstream header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self.tls else None)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to the upstream within {self.connect_timeout_s:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to the upstream: {exc}") from None
        return conn

    def _idle_connection(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    # -- slots: answers in progress, at most max_connections ---------------------------------------
    async def _acquire_slot(self, timeout_s: float) -> None:
        while self.busy >= self.max_connections:
            waiter = self.loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                async with asyncio.timeout(timeout_s):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout(f"all {self.max_connections} upstream connections stayed busy for "
                                        f"{timeout_s:g} s") from None
            finally:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
        self.busy += 1

    def _release_slot(self) -> None:
        self.busy -= 1
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break

    # -- idle connections ----------------------------------------------------------------------------
    def _give_back(self, conn: _Connection) -> None:
        conn.idle_since = self.loop.time()
        if len(self.idle) < self.max_connections:
            self.idle.append(conn)
        else:
            conn.abort()

    def _forget(self, conn: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close_stale(self) -> int:
        """Close the idle connections older than ``keepalive_expiry_s``; return how many.

        Connections the upstream closes leave the pool at once (``connection_lost``), so no socket
        waits in CLOSE-WAIT.
        """
        now = self.loop.time()
        stale = [c for c in self.idle if now - c.idle_since >= self.keepalive_expiry_s]
        for c in stale:
            self._forget(c)
            c.abort()
        return len(stale)

    def close(self) -> None:
        """Close every idle connection."""
        for c in list(self.idle):
            c.abort()
        self.idle.clear()

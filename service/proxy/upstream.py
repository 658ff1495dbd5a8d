"""Pooled HTTP clients for the upstream model endpoints, and the helpers that read their answers."""

from __future__ import annotations

import asyncio
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import orjson
from starlette.requests import Request

from ..config import UpstreamConfig
from .upstream_stream import StreamPool

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the upstream answered."""


SHARD_CONNECTIONS = 8
"""Connections per httpx pool. httpcore scans every pooled connection, polling idle sockets, on
each request (encode/httpcore#928, open), so one large pool costs O(connections) per request:
at 32 concurrent requests this was ~40% of the proxy's CPU. Small pools keep that scan short;
bench/proxy_overhead.py measured 402 -> 987 req/s on one worker from this change alone."""


class ShardedClient:
    """Several small connection pools for one upstream; each request leases the least busy one.

    Requests go through httpx's transport API, not ``AsyncClient``: a proxy must not follow
    redirects, keep a cookie jar (one user's upstream cookies would reach another user's
    requests) or apply client defaults, and skipping those layers also halves httpx's cost
    per request.
    """

    def __init__(self, up: UpstreamConfig) -> None:
        shards = max(1, math.ceil(up.max_connections / SHARD_CONNECTIONS))
        per_shard = min(up.max_connections, SHARD_CONNECTIONS)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard,
                              keepalive_expiry=up.keepalive_expiry_s)
        # one TLS context for all the shards (httpx's default verification): each transport building
        # its own took 0.53 s for 25 shards, on the event loop, at an upstream's first request
        tls = httpx.create_ssl_context()
        self.transports = [httpx.AsyncHTTPTransport(verify=tls, limits=limits) for _ in range(shards)]
        self.in_flight = [0] * shards

    def lease(self) -> tuple[httpx.AsyncHTTPTransport, Callable[[], None]]:
        """Return the least busy transport and the function that gives it back (call it exactly once)."""
        i = self.in_flight.index(min(self.in_flight))
        self.in_flight[i] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight[i] -= 1

        return self.transports[i], release

    async def close_stale(self) -> int:
        """Close the idle connections that have expired or that the upstream has closed; return how many.

        httpcore cleans a pool only when a request passes through it, and an idle proxy leases only
        the first pool, so the others kept sockets the upstream had closed (CLOSE-WAIT) for ever.
        """
        closed = 0
        for t in self.transports:
            # httpx keeps its httpcore pool private (`_pool`); `connections`, `is_idle`, `has_expired`
            # and `aclose` are httpcore's public connection interface.
            for conn in t._pool.connections:
                if conn.is_idle() and conn.has_expired():
                    await conn.aclose()
                    closed += 1
        return closed

    async def aclose(self) -> None:
        """Close every pool."""
        for t in self.transports:
            await t.aclose()


class UpstreamClients:
    """Per distinct upstream base URL and connection limits: a :class:`~.upstream_stream.StreamPool` for
    the request path (streams and whole answers) and a :class:`ShardedClient` (httpx) for shadow calls,
    passthrough traffic and ``splitwatch eval``.

    httpx stays where it is the right tool: off the client's path (shadow calls, capped by
    ``shadow.max_concurrency``), where a body passes through unparsed (passthrough), and in eval's and the
    judges' clients, whose cost is the model's, not the client's; there its redirects, proxies, TLS
    options and maintained HTTP/1.1 handling are worth more than the microseconds."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, int, float], ShardedClient] = {}
        self._streams: dict[tuple[str, int, float, float], StreamPool] = {}

    def stream_pool(self, up: UpstreamConfig) -> StreamPool:
        """Return the stream connection pool of this upstream (made on first use, in the running loop)."""
        key = (up.base_url, up.max_connections, up.keepalive_expiry_s, up.connect_timeout_s)
        pool = self._streams.get(key)
        if pool is None:
            pool = self._streams[key] = StreamPool(up)
        return pool

    def lease(self, up: UpstreamConfig) -> tuple[httpx.AsyncHTTPTransport, Callable[[], None]]:
        """Return a pooled transport for this upstream and its release function."""
        key = (up.base_url, up.max_connections, up.keepalive_expiry_s)
        sharded = self._clients.get(key)
        if sharded is None:
            sharded = self._clients[key] = ShardedClient(up)
        return sharded.lease()

    async def close_stale(self) -> int:
        """Close stale idle connections of every upstream (see :meth:`ShardedClient.close_stale`); return how many."""
        return (sum([await c.close_stale() for c in list(self._clients.values())])
                + sum(p.close_stale() for p in list(self._streams.values())))

    async def aclose(self) -> None:
        """Close every pooled transport and stream connection."""
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()
        for p in self._streams.values():
            p.close()
        self._streams.clear()


def build_request(up: UpstreamConfig, path: str, payload: bytes, request_id: str,
                  trace: dict[str, str] | None = None) -> httpx.Request:
    """Return the upstream request: POST JSON to ``base_url + path`` with the arm's key and timeouts
    (``trace``: the span's ``traceparent`` when tracing is on).

    ``timeout_s`` bounds connecting, each read and each write; the proxy also bounds the wait for the
    whole answer by it (``completions._upstream_wait``).
    """
    timeout = {"connect": up.connect_timeout_s, "read": up.timeout_s, "write": up.timeout_s,
               "pool": up.timeout_s}
    return httpx.Request("POST", up.base_url + path, content=payload,
                         headers=upstream_headers(up, request_id, trace), extensions={"timeout": timeout})


def status_error_kind(status: int) -> str | None:
    """Return the error kind of an upstream's HTTP status: ``upstream_5xx``, ``upstream_4xx``, or None."""
    if status >= 500:
        return "upstream_5xx"
    if status >= 400:
        return "upstream_4xx"
    return None


def upstream_headers(up: UpstreamConfig, request_id: str, trace: dict[str, str] | None = None) -> dict[str, str]:
    """Return the headers sent upstream: JSON content type, the arm's API key, the request id, and the
    trace context when tracing is on (``trace``)."""
    # identity: bodies are passed through byte for byte, no compression to undo.
    headers = {"content-type": "application/json", "accept-encoding": "identity", "x-request-id": request_id}
    key = up.api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    if trace:
        headers.update(trace)
    return headers


async def call_until_disconnect(request: Request, call: Awaitable[T], timeout_s: float) -> T:
    """Return the result of ``call``; raise ClientDisconnected if the client leaves first.

    Raises ``httpx.TimeoutException`` when the call takes longer than ``timeout_s`` in all.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(call)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    if watcher in done:
        raise ClientDisconnected()
    watcher.cancel()
    raise httpx.ReadTimeout(f"no complete answer within {timeout_s:g} s")


def usage_of(obj: Any) -> tuple[int | None, int | None]:
    """Return (prompt_tokens, completion_tokens) from an OpenAI response object's ``usage``, if present."""
    if not isinstance(obj, dict):
        return None, None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None, None
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (p if isinstance(p, int) else None, c if isinstance(c, int) else None)


def is_openai_error(body: bytes) -> bool:
    """Return True when ``body`` is JSON with an ``error`` object (an OpenAI-style error)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("error"), dict)


_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,40})"')


def has_usage_object(data: bytes) -> bool:
    """Return True when ``data`` may hold a ``usage`` object (not the ``"usage": null`` of every chunk
    that some servers send): a substring test, C speed, before any JSON is parsed."""
    return b'"usage":{' in data or b'"usage": {' in data


class SSEUsageScanner:
    """Finds the ``usage`` object in an SSE stream of chat/completion chunks, chunk by chunk.

    Per chunk it costs a few substring tests and no copy when the chunk ends a line and holds no
    usage object, which is every chunk but the last (docs/benchmarks.md, streams).
    """

    def __init__(self) -> None:
        self._tail = b""
        self._recent: deque[bytes] = deque()  # the stream's last chunks, about 2 KB: the final chunk's there
        self._recent_bytes = 0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def finish_reason(self) -> str | None:
        """Return the last non-null ``finish_reason`` in the stream's last 2 KB (where the final chunk is)."""
        found = _FINISH_REASON.findall(b"".join(self._recent))
        return found[-1].decode() if found else None

    def feed(self, chunk: bytes) -> None:
        """Scan one raw chunk; cheap when it carries no usage."""
        recent = self._recent
        recent.append(chunk)
        self._recent_bytes += len(chunk)
        while self._recent_bytes - len(recent[0]) >= 2048:
            self._recent_bytes -= len(recent.popleft())
        if not self._tail and chunk.endswith(b"\n") and not has_usage_object(chunk):
            return  # the usual chunk: whole lines, no usage
        data = self._tail + chunk
        if b"\n" not in data:
            self._tail = data
            return
        head, _, self._tail = data.rpartition(b"\n")
        if not has_usage_object(head):
            return
        for line in head.split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    p, c = usage_of(orjson.loads(line[5:].strip()))
                except orjson.JSONDecodeError:
                    continue
                if p is not None or c is not None:
                    self.prompt_tokens, self.completion_tokens = p, c


_EVENT_END = re.compile(rb"\r?\n\r?\n")


class UsageChunkFilter:
    """Removes from an SSE stream the usage-only chunk that the proxy, not the client, asked for.

    With ``stream_options.include_usage`` an OpenAI-compatible server ends the stream with one
    extra chunk, ``{"choices": [], "usage": {...}}``. The proxy requests it to log token counts
    and drops it here, so a client that did not ask for it does not get it. Complete events pass
    at once; a partial event (one the upstream split across reads) waits for its end.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """Return the complete events of ``chunk`` (after what was pending), minus the usage-only one."""
        if not self._pending and (chunk.endswith(b"\n\n") or chunk.endswith(b"\r\n\r\n")) \
                and not has_usage_object(chunk):
            return chunk  # the usual chunk: whole events, none of them usage: passed as is, no copy
        data = self._pending + chunk
        out: list[bytes] = []
        pos = 0
        for m in _EVENT_END.finditer(data):
            event = data[pos:m.end()]
            pos = m.end()
            if not has_usage_object(event) or not _is_usage_only(event):
                out.append(event)
        self._pending = data[pos:]
        return b"".join(out)

    def flush(self) -> bytes:
        """Return what is left when the stream ends (an unterminated last event, passed on as is)."""
        rest, self._pending = self._pending, b""
        return rest


def _is_usage_only(event: bytes) -> bool:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                obj = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                return False
            return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)
    return False

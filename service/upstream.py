"""Pooled HTTP clients for the upstream model endpoints, and the helpers that read their answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import orjson
from starlette.requests import Request

from .config import UpstreamConfig

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the upstream answered."""


class UpstreamClients:
    """One pooled ``httpx.AsyncClient`` per distinct upstream (base URL and limits)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, float, float, int], httpx.AsyncClient] = {}

    def client_for(self, up: UpstreamConfig) -> httpx.AsyncClient:
        """Return the shared client for this upstream, creating it on first use."""
        key = (up.base_url, up.timeout_s, up.connect_timeout_s, up.max_connections)
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(up.timeout_s, connect=up.connect_timeout_s),
                limits=httpx.Limits(max_connections=up.max_connections,
                                    max_keepalive_connections=up.max_connections),
                # Bodies are passed through byte for byte: no compression to undo.
                headers={"accept-encoding": "identity"},
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        """Close every pooled client."""
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()


def upstream_headers(up: UpstreamConfig, request_id: str) -> dict[str, str]:
    """Return the headers sent upstream: JSON content type, the arm's API key, the request id."""
    headers = {"content-type": "application/json", "x-request-id": request_id}
    key = up.api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
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


class SSEUsageScanner:
    """Finds the ``usage`` object in an SSE stream of chat/completion chunks, chunk by chunk."""

    def __init__(self) -> None:
        self._tail = b""
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def feed(self, chunk: bytes) -> None:
        """Scan one raw chunk; cheap when it carries no usage."""
        data = self._tail + chunk
        if b"\n" not in data:
            self._tail = data
            return
        head, _, self._tail = data.rpartition(b"\n")
        if b'"usage"' not in head:
            return
        for line in head.split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    p, c = usage_of(orjson.loads(line[5:].strip()))
                except orjson.JSONDecodeError:
                    continue
                if p is not None or c is not None:
                    self.prompt_tokens, self.completion_tokens = p, c

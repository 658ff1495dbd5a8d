"""The downstream side of the stream path: relay an upstream SSE stream to the client, chunk by chunk.

:class:`StreamRelay` is an ASGI response that writes with the server's own ``send`` (kept in the
scope by :class:`~.app.ProxyApp` as :data:`RAW_SEND`), below Starlette's exception layers: each of
those wraps every ``send`` in a coroutine of its own, and with ``StreamingResponse``'s async generator
they were about a quarter of a saturated worker's time (docs/benchmarks.md, streams). Those layers
only watch for an exception after the response started, and the relay never lets one out: it ends the
stream and logs how it ended instead.

Per wake-up it costs one ``read`` of the upstream (every chunk that arrived meanwhile, joined), the
usage scanner's substring tests, and one ``send``. The client's bytes are the upstream's, unchanged,
except the usage-only chunk the proxy itself asked for (``strip_usage``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from starlette.responses import Response

from ..events import TEXT_KIND_STREAM
from ..features.answer import STREAM_SAMPLE_BYTES
from .upstream import SSEUsageScanner, UsageChunkFilter
from .upstream_stream import UpstreamResponse

log = logging.getLogger(__name__)

RAW_SEND = "splitwatch.raw_send"
"""Scope key of the ASGI server's ``send``, set by the outermost layer of the proxy's app."""


class StreamEnd:
    """How a relayed stream ended: what :class:`StreamRelay` hands to its ``on_end`` callback."""

    __slots__ = ("answer_sample", "completion_tokens", "error", "finish_reason", "prompt_tokens", "status", "ttft_s")

    def __init__(self, status: int) -> None:
        self.status = status
        self.error: str | None = None
        self.ttft_s: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.finish_reason: str | None = None
        self.answer_sample = b""


class StreamRelay(Response):
    """Relay ``upstream``'s body to the client; call ``on_end`` once, however the stream ended.

    ``sent_at`` is when the request left for the upstream (TTFT is measured from it); with
    ``sample`` the answer's first bytes are kept for the event shipper's answer features.
    """

    def __init__(self, upstream: UpstreamResponse, headers: dict[str, str], *, sent_at: float,
                 strip_usage: bool, sample: bool, on_end: Callable[[StreamEnd], None]) -> None:
        # as StreamingResponse does: no body, so init_headers adds no content-length (the stream is chunked)
        self.status_code = upstream.status_code
        self.media_type = upstream.headers.get("content-type", "text/event-stream")
        self.background = None
        self.init_headers(headers)
        self.upstream = upstream
        self.sent_at = sent_at
        self.strip_usage = strip_usage
        self.sample = sample
        self.on_end = on_end
        self._client_gone = False
        self._finishing = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        send = scope.get(RAW_SEND, send)
        end = StreamEnd(self.status_code)
        watcher = asyncio.ensure_future(self._watch_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await self._relay(send, end)
        except asyncio.CancelledError:
            end.status, end.error = 499, "client_disconnected"  # the server shuts down, or the task was cancelled
            raise
        except Exception:  # never out: the exception layers above would try to start a second response
            log.exception("relaying a stream failed")
            end.error = end.error or "stream_interrupted"
        finally:
            watcher.cancel()
            self.upstream.close()
            self.on_end(end)

    async def _relay(self, send: Any, end: StreamEnd) -> None:
        upstream = self.upstream
        scanner = SSEUsageScanner()
        usage_filter = UsageChunkFilter() if self.strip_usage else None
        head = bytearray(TEXT_KIND_STREAM) if self.sample else None
        read = upstream.read
        try:
            while True:
                chunk = await read()
                if not chunk:
                    break
                if end.ttft_s is None:
                    end.ttft_s = time.perf_counter() - self.sent_at
                scanner.feed(chunk)
                if head is not None and len(head) <= STREAM_SAMPLE_BYTES:
                    head += chunk[:STREAM_SAMPLE_BYTES + 1 - len(head)]
                if usage_filter is not None:
                    chunk = usage_filter.feed(chunk)
                    if not chunk:
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if usage_filter is not None and (rest := usage_filter.flush()):
                await send({"type": "http.response.body", "body": rest, "more_body": True})
        except httpx.TimeoutException:
            end.error = "timeout"
        except httpx.HTTPError:
            end.error = "stream_interrupted"
        if self._client_gone:
            end.status, end.error = 499, "client_disconnected"
        else:
            self._finishing = True  # the end of the response wakes the watcher too: not a disconnect
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        end.prompt_tokens, end.completion_tokens = scanner.prompt_tokens, scanner.completion_tokens
        end.finish_reason = scanner.finish_reason()
        end.answer_sample = bytes(head or b"")

    async def _watch_disconnect(self, receive: Any) -> None:
        """Wait for the client to leave; then stop the upstream (the relay's read ends at once)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if not self._finishing:
            self._client_gone = True
            self.upstream.close()

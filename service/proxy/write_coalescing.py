"""A response's head and body in one socket write: the server's whole answers leave in one segment.

uvicorn's httptools protocol writes an answer's status line and headers (at ``http.response.start``) and
its body (at ``http.response.body``) in two ``transport.write`` calls, and uvloop sends each at once:
two ``send`` system calls and two TCP segments per whole answer, where one carries both. On loopback a
send also runs the receiving side's TCP path, so the second one was about a tenth of the worker's
profile at 8 connections (docs/benchmarks.md, issue 32).

:class:`CoalescingTransport` sits between uvicorn and the connection's transport. A response's head
(a write that starts with ``HTTP/``) is kept; the next write, its body in the same step of the request's
task for a whole answer, leaves with it in one ``writelines`` (one ``writev`` in uvloop, no copy). A head
that no write follows in that step (a stream waiting for its first chunk) is sent alone by a callback
scheduled when it was kept, before the loop waits for I/O again. Every other write goes straight
through: a first version kept every write until a callback of the next loop turn, and at 256
connections a turn serves so many connections that the answers waited for it (wrk's p50 rose from 35
to 43 ms). Closing the connection sends what is kept first; a connection that is already closing
drops it, as the transport itself would. Everything else is the transport's own.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """A transport that sends a response's head together with the write that follows it."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        """Send ``data``: with the kept head, if one is kept; keep it if it is a head; else at once."""
        if not data:
            return
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif data.startswith(b"HTTP/"):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        """Send each chunk as :meth:`write` does."""
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send the kept head alone (nothing when none is kept or the connection is closing)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def get_write_buffer_size(self) -> int:
        """Return the transport's buffered bytes plus the kept head's."""
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def close(self) -> None:
        """Send what is kept, then close the transport (which sends its buffer before closing)."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Drop what is kept and abort the transport."""
        self._held = None
        self._transport.abort()

    def write_eof(self) -> None:
        """Send what is kept, then half-close."""
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, pause_reading, resume_reading, set_protocol...: the transport's own
        return getattr(self._transport, name)

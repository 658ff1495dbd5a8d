"""One socket write per loop turn for the server's answers: a response's head and body leave together.

uvicorn's httptools protocol writes an answer's status line and headers (at ``http.response.start``) and
its body (at ``http.response.body``) in two ``transport.write`` calls, and uvloop sends each at once:
two ``send`` system calls and two TCP segments per whole answer, where one carries both. On loopback a
send also runs the receiving side's TCP path, so the second one was about a tenth of the worker's
profile at 8 connections (docs/benchmarks.md, issue 32).

:class:`CoalescingTransport` sits between uvicorn and the connection's transport. Writes made in one
turn of the event loop are kept in a list and sent with one ``writelines`` (one ``writev`` in uvloop,
no copy) by a callback scheduled for the same turn: before the loop polls for I/O again, so nothing
waits on the network for them. Closing the connection sends what is kept first; a connection that is
already closing drops it, as the transport itself would. Everything else is the transport's own.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """A transport whose writes in one loop turn become one ``writelines`` on ``transport``."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        """Keep ``data`` for this loop turn's write (sent by a callback scheduled with the first one)."""
        if not data:
            return
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self.flush)
        else:
            self._held.append(data)

    def writelines(self, chunks: Any) -> None:
        """Keep each chunk for this loop turn's write."""
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what this turn's writes kept, in one call (nothing when the connection is closing)."""
        held, self._held = self._held, None
        if not held or self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)

    def get_write_buffer_size(self) -> int:
        """Return the transport's buffered bytes plus those kept for this turn's write."""
        return self._transport.get_write_buffer_size() + sum(map(len, self._held or ()))

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

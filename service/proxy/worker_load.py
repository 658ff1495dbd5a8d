"""How many requests a proxy worker holds outside their upstream's wait: ``proxy.max_concurrent_requests``.

A request is held from the moment the server has parsed its headers (so requests waiting for a
saturated worker's event loop count, not only those being processed) until its answer is sent, except
while it waits for the upstream: a slow model is not the worker's load. The server's protocol
(:mod:`.http_limits`) starts each request's :class:`Hold` and ends it when the response completes or
the connection is lost, so the count cannot drift whatever path a request takes; the request path
pauses it around the upstream's wait and for a stream's relay (streams are bounded by
``proxy.max_concurrent_streams``).

The protocol also tells a request's :class:`Hold` when its client's connection is lost, and the hold
calls the request path back (:attr:`Hold.on_lost`): that is how a request waiting for its upstream
learns that nobody is waiting for the answer, without a watcher task per request.
"""

from __future__ import annotations

from collections.abc import Callable

HOLD = "splitwatch.hold"
"""Scope key of the request's :class:`Hold`, set by the server's protocol."""


class WorkerLoad:
    """The worker's count of held requests (one per process: read and written on its event loop only)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0


LOAD = WorkerLoad()


class Hold:
    """One request's place in :data:`LOAD`; every method is idempotent."""

    __slots__ = ("counted", "ended", "load", "lost", "on_lost")

    def __init__(self, load: WorkerLoad = LOAD) -> None:
        self.load = load
        self.counted = True
        self.ended = False
        self.lost = False  # the client's connection was lost before the answer was sent
        self.on_lost: Callable[[], None] | None = None  # called once, when it is lost
        load.held += 1

    def pause(self) -> None:
        """Stop counting the request (it waits for its upstream, or its stream is being relayed)."""
        if self.counted:
            self.counted = False
            self.load.held -= 1

    def resume(self) -> None:
        """Count the request again (its upstream answered), unless it has ended."""
        if not self.counted and not self.ended:
            self.counted = True
            self.load.held += 1

    def end(self) -> None:
        """The request's answer was sent, or its connection lost."""
        self.ended = True
        self.pause()

    def lose(self) -> None:
        """The client's connection was lost before the answer was sent: end, and call :attr:`on_lost`."""
        self.lost = True
        self.end()
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()

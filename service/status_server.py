"""The HTTP endpoints of the analyzer and the drift detector: ``/metrics``, ``/healthz``, ``/readyz``.

A background process must never look healthy while it does nothing. Each one runs its Kafka loop
under a :class:`Supervisor`, which restarts the loop with back-off when it dies, records a
heartbeat on every iteration and whether Kafka answered. ``/healthz`` fails (503) when the loop
has made no progress for ``stall_s`` seconds, so an orchestrator restarts the process; ``/readyz``
fails while Kafka is unreachable; ``/metrics`` always answers, with the connection state as a
gauge, so that a dashboard shows *why* a process is not ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app

log = logging.getLogger(__name__)
CONNECTION_CHECK_S = 1.0


class Supervisor:
    """Runs ``loop(supervisor)`` in a thread until ``stop`` is set, restarting it with back-off if it dies.

    The loop calls :meth:`beat` at least every few seconds and :meth:`set_connected` when it learns
    whether Kafka answers; both feed the process's health and readiness.
    """

    def __init__(self, name: str, loop: Callable[[Supervisor], None], stop: threading.Event,
                 connected: Gauge, restarts: Counter, stall_s: float = 60.0, backoff_s: float = 1.0,
                 backoff_max_s: float = 30.0) -> None:
        self.name = name
        self.loop = loop
        self.stop = stop
        self.stall_s = stall_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._connected_gauge = connected
        self._restarts = restarts
        self.connected = False
        self.last_error: str | None = None
        self.last_beat = time.monotonic()
        self._next_check = 0.0
        self.thread = threading.Thread(target=self._run, name=f"splitwatch-{name}", daemon=True)

    def start(self) -> Supervisor:
        """Start the supervised loop; return self."""
        self._connected_gauge.set(0)
        self.thread.start()
        return self

    def beat(self) -> None:
        """Record that the loop is making progress."""
        self.last_beat = time.monotonic()

    def polled(self, is_connected: Callable[[], bool]) -> None:
        """Record one iteration of the loop; at most once a second, ask ``is_connected`` and record it."""
        self.beat()
        now = time.monotonic()
        if now >= self._next_check:
            self.set_connected(is_connected(), "broker unreachable")
            self._next_check = now + CONNECTION_CHECK_S

    def set_connected(self, value: bool, error: str | None = None) -> None:
        """Record whether Kafka answered the loop's last call (and the error when it did not)."""
        if value != self.connected:
            log.info("%s: Kafka %s", self.name, "reachable" if value else f"unreachable ({error})")
        self.connected = value
        self.last_error = None if value else error
        self._connected_gauge.set(1 if value else 0)

    def wait_backoff(self, attempt: int) -> None:
        """Sleep the back-off of retry number ``attempt`` (doubling, capped), or until stopped."""
        self.beat()  # waiting to retry is progress: the loop is alive and trying
        self.stop.wait(min(self.backoff_s * 2 ** min(attempt, 16), self.backoff_max_s))

    def _run(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            self.beat()
            try:
                self.loop(self)
                return  # the loop returned: it saw ``stop``
            except Exception as exc:
                self.set_connected(False, type(exc).__name__)
                self._restarts.inc()
                log.exception("%s loop failed; restarting it", self.name)
                self.wait_backoff(attempt)
                attempt += 1

    @property
    def healthy(self) -> bool:
        """Return True while the loop runs and beat within ``stall_s``."""
        return self.thread.is_alive() and time.monotonic() - self.last_beat < self.stall_s

    def state(self) -> dict[str, Any]:
        """Return the loop's state for /healthz and /readyz."""
        return {"loop": self.name, "alive": self.thread.is_alive(),
                "seconds_since_progress": round(time.monotonic() - self.last_beat, 1),
                "kafka_connected": self.connected, "last_error": self.last_error}


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every 15 s would flood the log
        pass


def _json(start_response: Callable[..., Any], ok: bool, body: dict[str, Any]) -> Iterable[bytes]:
    start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
    return [orjson.dumps(body)]


def start_status_server(host: str, port: int, registry: CollectorRegistry, supervisors: list[Supervisor],
                        details: Callable[[], dict[str, Any]] | None = None) -> WSGIServer:
    """Serve /metrics (``registry``), /healthz and /readyz (``supervisors``; ``details`` adds to /readyz's
    body) in a thread; return the server."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        states = [s.state() for s in supervisors]
        if path == "/healthz":
            return _json(start_response, all(s.healthy for s in supervisors), {"loops": states})
        if path == "/readyz":
            body: dict[str, Any] = {"loops": states}
            if details is not None:
                try:
                    body.update(details())
                except Exception as exc:  # a detail must never take readiness down
                    body["details_error"] = f"{type(exc).__name__}: {exc}"
            return _json(start_response, all(s.healthy and s.connected for s in supervisors), body)
        return metrics_app(environ, start_response)

    server = make_server(host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="splitwatch-status-http", daemon=True).start()
    return server

"""The proxy's FastAPI application, built by :func:`create_app` from a config."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..config import Config, load_config
from ..delivery.publisher import EventPublisher, open_publisher
from .errors import ProxyError, error_response
from .routes import admin, assignments, completions, health, outcomes
from .runtime import Runtime
from .stream_relay import RAW_SEND
from .tracing import open_tracing

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "SPLITWATCH_WORKER_INDEX"
WORKERS_ENV = "SPLITWATCH_WORKERS"
CONFIG_PATH_ENV = "SPLITWATCH_CONFIG"
STALE_CONNECTIONS_S = 1.0


COMPLETION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class ProxyApp(FastAPI):
    """The proxy's FastAPI app. Its outermost layer keeps the server's ``send`` in the scope
    (:data:`~.stream_relay.RAW_SEND`), for the stream relay to write below the per-message wrappers, and
    hands ``POST`` to the two completion paths straight to their handler.

    That direct call skips what FastAPI and Starlette do per request and these handlers never use: the
    middleware stack and its wrapped ``send``, the route table's regular expressions, dependency solving
    and the endpoint's response machinery (docs/benchmarks.md, issue 32). The routes stay declared, for
    the OpenAPI document; their errors are answered as the app's exception handlers answer them.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[RAW_SEND] = send
        kind = COMPLETION_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind is None or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        try:
            response = await completions.proxy_completion(Request(scope, receive), kind)
        except ProxyError as exc:
            response = exc.response()
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            response = error_response(500, "internal error in the splitwatch proxy; see its log", "server_error",
                                      code="internal_error")
        await response(scope, receive, send)


def create_app(config: Config, config_path: str | Path | None = None, *,
               publisher: EventPublisher | None = None, freeze_gc: bool = False) -> FastAPI:
    """Return the proxy application; it opens its event publisher at start-up unless kafka.enabled is false.
    ``freeze_gc``: once started, move every object to the collector's permanent generation (a worker process)."""
    runtime = Runtime(config, config_path, publisher)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.kafka.enabled and runtime.publisher is None:
            runtime.publisher = await asyncio.to_thread(
                open_publisher, config.kafka, int(os.environ.get(WORKER_INDEX_ENV, "0")),
                config.proxy.graceful_shutdown_s, int(os.environ.get(WORKERS_ENV, "1")),
                tuple(config.drift.languages))
        runtime.tracing = open_tracing(config)  # in the worker: the batch exporter's thread is its own
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, runtime.reload)  # only in the main thread
        runtime.reload_if_changed()
        await asyncio.to_thread(_start_control, runtime)
        cleaner = asyncio.create_task(_close_stale_connections(runtime))
        if freeze_gc:
            # What start-up built (modules, the config, compiled experiments, clients) lives as long as the
            # worker: out of the cyclic collector's sight, a full collection walks the requests' objects
            # only. Those collections of every start-up object held the event loop for milliseconds:
            # gc.freeze() cut the p99 at 8 connections from 6.1-8.1 ms to 4.9-5.3 ms (docs/benchmarks.md,
            # issue 32). Only in a server's worker process: an app built in a test's process must not pin
            # the garbage of the tests before it.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            cleaner.cancel()
            runtime.control.stop()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await runtime.clients.aclose()
            if runtime.publisher is not None:
                await asyncio.to_thread(runtime.publisher.close)
            if runtime.tracing is not None:
                await asyncio.to_thread(runtime.tracing.shutdown)  # the buffered spans, within its timeout

    app = ProxyApp(title="splitwatch proxy", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    for module in (completions, outcomes, assignments, admin, health):
        app.include_router(module.router)
    _install_error_handlers(app)
    return app


def _start_control(runtime: Runtime) -> None:
    """Start reading experiment state; before serving, wait (up to ``proxy.control_startup_timeout_s``)
    until the control topic was read to its end, so that a restarted worker applies a pause or a
    rollback from its first request. Without Kafka it serves from its cache and ``/readyz`` says so."""
    runtime.control.start()
    timeout = runtime.config.proxy.control_startup_timeout_s
    if not runtime.control.wait_caught_up(timeout):
        status = runtime.control.status()
        log.warning("control topic not read within %.1f s (%s): serving with the %s state", timeout,
                    status.get("last_error") or "still reading", status["source"])
    runtime.export_state()


async def _close_stale_connections(runtime: Runtime) -> None:
    """Close upstream connections the upstream has closed or that expired while idle, every second."""
    while True:
        await asyncio.sleep(STALE_CONNECTIONS_S)
        try:
            await runtime.clients.close_stale()
        except Exception:  # never let the cleaner die: sockets would pile up again
            log.exception("closing stale upstream connections failed")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProxyError)
    async def _proxy_error(request: Request, exc: ProxyError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in err["loc"])
        return error_response(400, f"{field}: {err['msg']}", param=field or None, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error in the splitwatch proxy; see its log", "server_error",
                              code="internal_error")


def app_from_env() -> FastAPI:
    """Return the app for the config file named by ``SPLITWATCH_CONFIG`` (used by worker processes)."""
    path = os.environ[CONFIG_PATH_ENV]
    return create_app(load_config(path), path, freeze_gc=True)

"""Running the proxy: one worker in-process, or N worker processes under a small supervisor.

With ``--workers N`` the supervisor binds the listening socket once, starts N
worker processes that share it, and sets ``PROMETHEUS_MULTIPROC_DIR`` so that
``/metrics`` on any worker aggregates all of them. SIGHUP is forwarded to every
worker, and each reloads the config in place (an invalid file is refused with a
log line; the old config stays). SIGTERM/SIGINT stop the workers gracefully. A
worker that dies is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import uvicorn

from ..config import ProxyConfig
from ..logs import configure_logging

log = logging.getLogger(__name__)


def _uvicorn_config(app: object, host: str, port: int, proxy: ProxyConfig, factory: bool = False) -> uvicorn.Config:
    """Return uvicorn's config with the server-layer limits of ``proxy`` (docs/deployment.md).

    httptools (uvicorn's fast parser) with our header size and header time limits
    (:mod:`.http_limits`); ``limit_concurrency`` answers 503 past ``max_concurrency`` connections
    per worker; ``timeout_keep_alive`` closes idle kept-alive connections.
    """
    from .http_limits import bounded_httptools_protocol

    return uvicorn.Config(app, host=host, port=port, factory=factory, log_level="info", access_log=False,
                          timeout_graceful_shutdown=int(proxy.graceful_shutdown_s) or None, lifespan="on",
                          loop="auto", http=bounded_httptools_protocol(proxy.max_header_bytes, proxy.header_timeout_s),
                          limit_concurrency=proxy.max_concurrency, timeout_keep_alive=proxy.keep_alive_s,
                          h11_max_incomplete_event_size=proxy.max_header_bytes)


def _metrics_dir(state_dir: str, port: int) -> str:
    """Empty ``<state_dir>/metrics-<port>`` and point prometheus-client's multiprocess mode at it.

    Always on, even with one worker: each worker's event shipper is a process of its own, and its
    metrics reach /metrics this way. Must run before anything imports prometheus_client. The
    directory is wiped at each start (what it holds belongs to the previous run).
    """
    path = Path(state_dir) / f"metrics-{port}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return str(path)


def serve_single(config_path: str, host: str, port: int) -> None:
    """Run one proxy worker in this process until SIGTERM/SIGINT."""
    from ..config import load_config

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app installs its reload handler
    config = load_config(config_path)
    _metrics_dir(config.proxy.state_dir, port)
    from .app import create_app

    app = create_app(config, config_path, freeze_gc=True)
    uvicorn.Server(_uvicorn_config(app, host, port, config.proxy)).run()


def _worker_main(config_path: str, sock: socket.socket, index: int, proxy: ProxyConfig) -> None:
    # SIGHUP's default action kills the process: ignore it until the app installs its reload handler
    # (which then also catches up with a change made meanwhile).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.environ["SPLITWATCH_CONFIG"] = config_path
    os.environ["SPLITWATCH_WORKER_INDEX"] = str(index)
    configure_logging(index)
    cfg = _uvicorn_config("splitwatch.service.proxy.app:app_from_env", "", 0, proxy, factory=True)
    uvicorn.Server(cfg).run(sockets=[sock])


# Past the size limits on purpose (pyproject.toml):
# the supervisor's one loop (start, watch, restart, stop N workers and their signals)
def serve_workers(config_path: str, host: str, port: int, workers: int) -> None:  # noqa: C901
    """Run ``workers`` proxy processes on one socket under this supervising process."""
    from ..config import load_config

    config = load_config(config_path)  # fail fast, with the field named, before forking anything
    os.environ["SPLITWATCH_WORKERS"] = str(workers)
    _metrics_dir(config.proxy.state_dir, port)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False

    def start(index: int) -> None:
        p = ctx.Process(target=_worker_main, args=(config_path, sock, index, config.proxy),
                        name=f"splitwatch-worker-{index}")
        p.start()
        procs[index] = p

    def on_hup(signum: int, frame: object) -> None:
        log.info("SIGHUP: asking %d workers to reload %s", len(procs), config_path)
        for p in procs.values():
            if p.pid:
                os.kill(p.pid, signal.SIGHUP)

    def on_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    log.info("splitwatch proxy: %d workers on http://%s:%d", workers, host, sock.getsockname()[1])
    for i in range(workers):
        start(i)
    try:
        while not stopping:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                if not p.is_alive() and not stopping:
                    log.error("worker %d exited with %s; starting a new one", i, p.exitcode)
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(p.pid)
                    start(i)
    finally:
        for p in procs.values():
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + config.proxy.graceful_shutdown_s + 15
        for p in procs.values():
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
        sock.close()

"""The shipper's process: its entry point (a child of each proxy worker, see :mod:`.shipper`), its CPU
placement and priority, and the adoption of spools that no worker owns any more."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .. import metrics
from ..config import KafkaConfig
from ..features.prompt import LANGUAGES
from .shipper import Shipper
from .shipper_status import STATE, STATE_DONE, STATE_LOCKED, STATE_RUNNING, LocalErrorSlot, local_status
from .spool import Spool, SpoolLockedError

log = logging.getLogger(__name__)

SHIPPER_CPUS_ENV = "SPLITWATCH_SHIPPER_CPUS"
SHIPPER_NICE_ENV = "SPLITWATCH_SHIPPER_NICE"
SHIPPER_NICE = 10
"""The shipper's CPU priority below its worker's (``os.nice``). Its work is batched and waits well;
the worker's relays do not: on a shared core, a shipper at the worker's priority preempted it for
up to 140 ms at a time, and streams' chunks and first tokens waited that long (docs/benchmarks.md,
streams). 0 keeps the worker's priority."""


def open_spool(cfg: KafkaConfig, path: str | Path) -> Spool:
    """Return the spool at ``path`` with the config's limits (raises SpoolLockedError when a live process owns it)."""
    return Spool(path, max_bytes=cfg.spool.max_bytes, segment_bytes=cfg.spool.segment_bytes, fsync=cfg.spool.fsync,
                 fsync_interval_ms=cfg.spool.fsync_interval_ms, full_policy=cfg.spool.full_policy)


META_FILE = "splitwatch-spool.json"


def _destination(cfg: KafkaConfig) -> dict[str, str]:
    return {"bootstrap_servers": cfg.bootstrap_servers, "topic": cfg.topic}


def adopt_orphans(cfg: KafkaConfig, own: Path, workers: int, stop: threading.Event) -> None:
    """Deliver spools ``worker-N`` (N >= workers) that no process owns, e.g. after fewer workers.

    Only spools written for the same Kafka destination are adopted: a shared spool directory must
    never send one proxy's events to another proxy's topic.
    """
    for path in sorted(own.parent.glob("worker-*")):
        suffix = path.name.removeprefix("worker-")
        if path == own or not suffix.isdigit() or int(suffix) < workers or stop.is_set():
            continue
        try:
            meta = json.loads((path / META_FILE).read_text())
        except (OSError, ValueError):
            meta = None
        if meta != _destination(cfg):
            log.warning("spool %s left by another run is for %s, not this proxy's Kafka; leaving it", path, meta)
            continue
        try:
            spool = open_spool(cfg, path)
        except SpoolLockedError:
            continue  # a live process owns it
        if spool.pending_events:
            log.info("adopting %d undelivered events from spool %s", spool.pending_events, path)
        Shipper(cfg, spool, None, local_status(), LocalErrorSlot(), 0.0, report=False).drain(stop)


def shipper_main(cfg_json: str, spool_dir: str, conn: Connection, status: Any, error: Any, flush_s: float,
                 adopt_workers: int | None = None, languages: tuple[str, ...] = LANGUAGES) -> None:
    """Entry point of the shipper process (multiprocessing target).

    With ``adopt_workers`` (worker 0 does this) it also delivers orphaned spools of higher workers.
    """
    from ..logs import configure_logging

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # it stops when the worker's pipe closes
        signal.signal(sig, signal.SIG_IGN)
    cpus = os.environ.get(SHIPPER_CPUS_ENV)
    if cpus:  # keep the shipper off the workers' cores (e.g. "3" or "2,3")
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    nice = int(os.environ.get(SHIPPER_NICE_ENV, SHIPPER_NICE))
    if nice > 0:
        os.nice(nice)
    configure_logging()
    cfg = KafkaConfig.model_validate_json(cfg_json)
    try:
        spool = open_spool(cfg, spool_dir)
    except SpoolLockedError:
        status[STATE] = STATE_LOCKED
        return
    (Path(spool_dir) / META_FILE).write_text(json.dumps(_destination(cfg)))
    shipper = Shipper(cfg, spool, conn, status, error, flush_s, languages=tuple(languages))
    shipper.set_connected(False)
    shipper._publish_state()
    status[STATE] = STATE_RUNNING
    stop_adopting = threading.Event()
    if adopt_workers is not None:
        threading.Thread(target=adopt_orphans, args=(cfg, Path(spool_dir), adopt_workers, stop_adopting),
                         name="splitwatch-spool-adopter", daemon=True).start()
    try:
        shipper.run()
    finally:
        stop_adopting.set()
        status[STATE] = STATE_DONE
        metrics.forget_this_process()

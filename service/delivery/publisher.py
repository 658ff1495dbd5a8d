"""Event delivery to Kafka that never blocks a request and loses nothing it can keep.

The request path calls :meth:`EventPublisher.publish`, which only appends to a
bounded in-memory queue. A writer thread serialises the queue every
``kafka.linger_ms`` and hands the batch over a pipe to this worker's shipper
process (:mod:`service.shipper`), which writes it to the on-disk spool first and
ships it to Kafka from there. An outage, a broker restart or a proxy restart all
replay from disk, in order. Delivery is at least once: consumers deduplicate by
``event_id``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .. import metrics
from ..config import KafkaConfig
from ..features import LANGUAGES
from .shipper import (
    CONNECTED,
    ERROR_BYTES,
    PENDING_EVENTS,
    SENT,
    SPOOL_DROPPED,
    STATE,
    STATE_LOCKED,
    STATE_RUNNING,
    STATE_STARTING,
    STATUS_SLOTS,
    PipeRecord,
    encode_batch,
    shipper_main,
)
from .spool import SpoolLockedError

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0


class EventPublisher:
    """Bounded queue + writer thread + shipper process; see the module docstring."""

    def __init__(self, cfg: KafkaConfig, spool_dir: str | Path | None = None, flush_s: float = 10.0,
                 adopt_workers: int | None = None, languages: tuple[str, ...] = LANGUAGES) -> None:
        self.cfg = cfg
        self.languages = languages  # the shipper detects the prompt's language among these
        self.adopt_workers = adopt_workers
        self.spool_dir = Path(spool_dir or cfg.spool.dir)
        self.flush_s = flush_s
        self._queue: deque[BaseModel] = deque()
        self._pending: list[PipeRecord] = []  # serialised, not yet accepted by the pipe
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")
        self._status: Any = self._ctx.Array("d", STATUS_SLOTS, lock=False)
        self._error: Any = self._ctx.Array("c", ERROR_BYTES, lock=False)
        self._proc: Any = None
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self.queue_dropped = 0

    # -- request path -----------------------------------------------------------------------------
    def publish(self, event: BaseModel) -> bool:
        """Queue an event for delivery without blocking; return False (and count it) when the queue is full."""
        if len(self._queue) >= self.cfg.queue_max_events:
            self.queue_dropped += 1
            metrics.EVENTS_DROPPED.labels("queue_full").inc()
            return False
        self._queue.append(event)
        metrics.EVENTS_ENQUEUED.labels(event.type).inc()  # type: ignore[attr-defined]
        if len(self._queue) >= self.cfg.batch_max_events:
            self._wake.set()
        return True

    # -- state for /readyz ------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Return the events in memory (queue and not yet handed to the shipper)."""
        return len(self._queue) + len(self._pending)

    @property
    def spooled(self) -> int:
        """Return the events on disk not yet acknowledged by Kafka."""
        return int(self._status[PENDING_EVENTS])

    @property
    def connected(self) -> bool:
        """Return True when the shipper's last send to Kafka succeeded."""
        return self._status[CONNECTED] == 1.0

    @property
    def dropped(self) -> int:
        """Return the events lost to a full queue or a full spool."""
        return self.queue_dropped + int(self._status[SPOOL_DROPPED])

    @property
    def sent(self) -> int:
        """Return the events Kafka acknowledged since the shipper started."""
        return int(self._status[SENT])

    @property
    def last_error(self) -> str | None:
        """Return the name of the last Kafka error, if any."""
        return self._error.value.decode() or None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the shipper process (which takes the spool's lock) and the writer thread.

        Raises SpoolLockedError when another process owns the spool directory.
        """
        self._start_shipper()
        self._thread = threading.Thread(target=self._run_writer, name="splitwatch-event-writer", daemon=True)
        self._thread.start()

    def _start_shipper(self) -> None:
        for i in range(STATUS_SLOTS):
            self._status[i] = 0.0
        self._status[STATE] = STATE_STARTING
        receiver, sender = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(
            target=shipper_main, name="splitwatch-shipper", daemon=False,
            args=(self.cfg.model_dump_json(), str(self.spool_dir), receiver, self._status, self._error,
                  self.flush_s, self.adopt_workers, self.languages))
        self._proc.start()
        receiver.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._status[STATE] == STATE_STARTING and self._proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._status[STATE] == STATE_LOCKED:
            self._proc.join(5)
            sender.close()
            raise SpoolLockedError(f"spool directory {self.spool_dir} is in use by another process")
        if self._status[STATE] != STATE_RUNNING:
            sender.close()
            raise RuntimeError(f"the event shipper did not start (exit code {self._proc.exitcode})")
        self._conn = sender

    def close(self) -> None:
        """Hand everything queued to the shipper, let it deliver for up to ``flush_s`` s, wait for it."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(self.flush_s + 10)
        self._thread = None
        if self._conn is not None:
            with contextlib.suppress(OSError):  # a dead shipper: its spool is replayed at the next start
                self._conn.send_bytes(b"")  # close marker: the shipper flushes and exits
            self._conn.close()
        if self._proc is not None:
            self._proc.join(self.flush_s + 10)
            if self._proc.is_alive():
                log.error("event shipper did not stop in time; killing it (its spool is kept)")
                self._proc.kill()
        if self._pending or self._queue:
            log.error("%d events could not be handed to the shipper at shutdown", self.queued)

    # -- writer thread ----------------------------------------------------------------------------
    def _hand_over(self) -> None:
        """Serialise the queue and send it to the shipper; keep it (and restart the shipper) on failure."""
        while self._queue:
            ev = self._queue.popleft()
            sample = getattr(ev, "_language_sample", "").encode()
            self._pending.append((ev.key(), ev.to_json(), sample))  # type: ignore[attr-defined]
        if not self._pending:
            return
        assert self._conn is not None
        try:
            self._conn.send_bytes(encode_batch(self._pending))
            self._pending = []
        except OSError as exc:
            log.error("event shipper unreachable (%s); restarting it", exc)
            self._restart_shipper()

    def _restart_shipper(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
        try:
            self._start_shipper()
        except (RuntimeError, SpoolLockedError) as exc:
            log.error("cannot restart the event shipper: %s; events stay in memory", exc)
            time.sleep(1.0)

    def _run_writer(self) -> None:
        linger = max(self.cfg.linger_ms / 1000, 0.001)
        while not self._stop.is_set():
            self._wake.wait(timeout=linger)
            self._wake.clear()
            if self._proc is not None and not self._proc.is_alive():
                log.error("event shipper exited with %s; restarting it", self._proc.exitcode)
                self._restart_shipper()
            self._hand_over()
            metrics.EVENTS_QUEUED.set(self.queued)
        self._hand_over()
        metrics.EVENTS_QUEUED.set(self.queued)


def open_publisher(cfg: KafkaConfig, worker: int = 0, flush_s: float = 10.0, workers: int = 1,
                   languages: tuple[str, ...] = LANGUAGES) -> EventPublisher:
    """Return a started publisher whose spool is ``<spool.dir>/worker-<N>`` (the first free one from N).

    Worker 0's shipper also delivers spools left by workers >= ``workers`` of an earlier run.
    """
    base = Path(cfg.spool.dir)
    for index in range(worker, worker + 64):
        pub = EventPublisher(cfg, base / f"worker-{index}", flush_s, adopt_workers=workers if worker == 0 else None,
                             languages=languages)
        try:
            pub.start()
            return pub
        except SpoolLockedError:
            continue
    raise SpoolLockedError(f"no free spool directory under {base}")

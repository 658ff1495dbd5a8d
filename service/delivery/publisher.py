"""Event delivery to Kafka that never blocks a request and loses nothing it can keep.

The request path calls :meth:`EventPublisher.publish`, which only appends to a
bounded in-memory queue. A writer thread serialises the queue every
``kafka.linger_ms`` and hands the batch over a pipe to this worker's shipper
process (:mod:`.shipper`), which writes it to the on-disk spool first and
ships it to Kafka from there. An outage, a broker restart or a proxy restart all
replay from disk, in order. Delivery is at least once: consumers deduplicate by
``event_id``.

No single event can stop this path: an event that cannot be serialised or framed, or that is
larger than ``kafka.max_event_bytes``, is set aside in the dead-letter file
(:mod:`.dead_letters`) and the queue moves on. The writer thread survives any error and is
restarted if it ever dies; the shipper process is restarted when it exits; :attr:`healthy`
says whether both are making progress (``/readyz`` fails otherwise).
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
from ..features.prompt import LANGUAGES
from ..request_events import RequestEvent
from .dead_letters import DeadLetters, dead_letters_for
from .pipe_frames import MAX_SAMPLE_BYTES, PipeRecord, encode_batch, frame_error
from .shipper_process import shipper_main
from .shipper_status import (
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
)
from .spool import SpoolLockedError

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0
STALL_S = 10.0  # the writer thread must loop at least this often, or the publisher is not healthy


class EventPublisher:
    """Bounded queue + writer thread + shipper process; see the module docstring."""

    def __init__(self, cfg: KafkaConfig, spool_dir: str | Path | None = None, flush_s: float = 10.0,
                 adopt_workers: int | None = None, languages: tuple[str, ...] = LANGUAGES) -> None:
        self.cfg = cfg
        self.languages = languages  # the shipper detects the prompt's language among these
        self.adopt_workers = adopt_workers
        self.spool_dir = Path(spool_dir or cfg.spool.dir)
        self.flush_s = flush_s
        self._queue: deque[BaseModel | RequestEvent] = deque()
        self._pending: list[PipeRecord] = []  # serialised, not yet accepted by the pipe
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")
        self._status: Any = self._ctx.Array("d", STATUS_SLOTS, lock=False)
        self._error: Any = self._ctx.Array("c", ERROR_BYTES, lock=False)
        self._proc: Any = None
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._heartbeat = time.monotonic()
        self.queue_dropped = 0
        self._enqueued: dict[str, Any] = {}  # splitwatch_events_enqueued's child per event type
        self.dead_letters: DeadLetters = dead_letters_for(self.spool_dir, cfg.spool.dead_letter_max_bytes)

    # -- request path -----------------------------------------------------------------------------
    def publish(self, event: BaseModel | RequestEvent) -> bool:
        """Queue an event for delivery without blocking; return False (and count it) when the queue is full."""
        if len(self._queue) >= self.cfg.queue_max_events:
            self.queue_dropped += 1
            metrics.EVENTS_DROPPED.labels("queue_full").inc()
            return False
        if self._thread is not None and not self._thread.is_alive() and not self._closing:
            self._start_writer(restart=True)  # never queue into a void
        self._queue.append(event)
        counter = self._enqueued.get(event.type)  # type: ignore[union-attr]
        if counter is None:  # labels() checks and locks on every call: each type's child is kept
            counter = self._enqueued[event.type] = metrics.EVENTS_ENQUEUED.labels(event.type)  # type: ignore[union-attr]
        counter.inc()
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

    @property
    def healthy(self) -> bool:
        """Return True while the writer thread loops and the shipper process runs (Kafka may be down)."""
        return (self._thread is not None and self._thread.is_alive()
                and time.monotonic() - self._heartbeat < STALL_S
                and self._proc is not None and self._proc.is_alive() and self._status[STATE] == STATE_RUNNING)

    @property
    def dead_lettered(self) -> int:
        """Return the events in this worker's dead-letter file."""
        return self.dead_letters.count()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the shipper process (which takes the spool's lock) and the writer thread.

        Raises SpoolLockedError when another process owns the spool directory.
        """
        self._start_shipper()
        self._start_writer()

    def _start_writer(self, restart: bool = False) -> None:
        if restart:
            log.error("the event writer thread had died; starting a new one")
            metrics.DELIVERY_RESTARTS.labels("writer").inc()
        self._heartbeat = time.monotonic()
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
        self._closing = True
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
            # Kept, not lost: the dead-letter file holds them for a replay.
            log.error("%d events could not be handed to the shipper at shutdown; writing them to %s",
                      self.queued, self.dead_letters.path)
            self._set_aside_unsent()

    def _set_aside_unsent(self) -> None:
        while self._queue:
            record = self._serialise(self._queue.popleft())
            if record is not None:
                self._pending.append(record)
        for key, value, _sample in self._pending:
            self.dead_letters.add("undelivered_at_shutdown", key, value, "the event shipper was unreachable")
        self._pending = []

    # -- writer thread ----------------------------------------------------------------------------
    def _serialise(self, ev: BaseModel | RequestEvent) -> PipeRecord | None:
        """Return the event as a pipe record, or None after setting it aside (it can never be sent)."""
        key, value = b"", b""
        try:
            key, value = ev.key(), ev.to_json()  # type: ignore[attr-defined]
            sample = getattr(ev, "text_sample", b"")
        except Exception as exc:  # e.g. a string orjson refuses (lone surrogates)
            value = value or repr(ev).encode("utf-8", "replace")
            self.dead_letters.add("unserialisable", key, value, f"{type(exc).__name__}: {exc}")
            return None
        if len(value) > self.cfg.max_event_bytes:
            self.dead_letters.add("too_large", key, value,
                                  f"{len(value)} bytes > kafka.max_event_bytes ({self.cfg.max_event_bytes})")
            return None
        problem = frame_error(key, value)
        if problem:
            self.dead_letters.add("unserialisable", key, value, problem)
            return None
        return key, value, sample[:MAX_SAMPLE_BYTES]

    def _hand_over(self) -> None:
        """Serialise the queue and send it to the shipper; keep it (and restart the shipper) on failure."""
        while self._queue:
            record = self._serialise(self._queue.popleft())
            if record is not None:
                self._pending.append(record)
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
            self._heartbeat = time.monotonic()
            self._wake.wait(timeout=linger)
            self._wake.clear()
            try:
                if self._proc is not None and not self._proc.is_alive():
                    log.error("event shipper exited with %s; restarting it", self._proc.exitcode)
                    metrics.DELIVERY_RESTARTS.labels("shipper").inc()
                    self._restart_shipper()
                self._hand_over()
            except Exception:  # a bug here must not end delivery: log it and go on
                log.exception("event writer: unexpected error; continuing")
                time.sleep(linger)
            metrics.EVENTS_QUEUED.set(self.queued)
        try:
            self._hand_over()
        except Exception:
            log.exception("event writer: unexpected error in the final hand-over")
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

"""The event shipper: a child process of each proxy worker that owns its spool and Kafka producer.

It receives batches of serialised events over a pipe from the worker's
:class:`~service.publisher.EventPublisher`, appends them to the on-disk spool
(write-ahead), and ships batches from the spool to Kafka, advancing the spool's
cursor only once Kafka acknowledged them. Running it in its own process keeps
kafka-python's CPU time and GIL hand-offs away from the worker's event loop
(bench/proxy_overhead.py measured the difference).

It ignores SIGINT/SIGTERM: it stops when the worker closes the pipe (or dies),
after delivering what it can within the worker's flush deadline.

Only errors that a retry can cure are retried. When Kafka refuses a batch for a property of a
record (too large, invalid), the shipper sends that batch's records one at a time and sets the
offending one aside in the dead-letter file (:mod:`.dead_letters`), so one record never holds
back the spool. Every other error (broker down, timeouts, authorisation) keeps the events in the
spool and is retried with back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from .. import metrics
from ..config import KafkaConfig
from ..features.prompt import LANGUAGES
from .dead_letters import DeadLetters, dead_letters_for
from .kafka_sink import KafkaSink, SinkUnavailable, record_error_reason
from .pipe_frames import decode_batch
from .shipper_status import CONNECTED, ERROR_BYTES, PENDING_BYTES, PENDING_EVENTS, SENT, SPOOL_DROPPED
from .spool import Record, Spool
from .text_enrichment import with_text_features

log = logging.getLogger(__name__)


class Shipper:
    """Pipe reader thread + Kafka shipping loop around one spool; see the module docstring."""

    def __init__(self, cfg: KafkaConfig, spool: Spool, conn: Connection | None, status: Any, error: Any,
                 flush_s: float, sink: Any = None, report: bool = True,
                 languages: tuple[str, ...] = LANGUAGES, dead_letters: DeadLetters | None = None) -> None:
        self.cfg = cfg
        self.dead_letters = dead_letters or dead_letters_for(spool.dir, cfg.spool.dead_letter_max_bytes)
        self._isolate = 0  # records still to send one at a time after a batch was refused for a record
        self.languages = languages
        self.spool = spool
        self.conn = conn
        self.status = status
        self.error = error
        self.flush_s = flush_s
        self.sink = sink or KafkaSink(cfg)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._eof = threading.Event()
        self._next_attempt = 0.0
        self._backoff = cfg.reconnect_backoff_ms / 1000
        self.connected = False
        self.last_error: str | None = None
        self.report = report  # False for an adopted spool: the gauges describe this worker's own spool

    # -- receiving --------------------------------------------------------------------------------
    def append(self, records: list[Record]) -> None:
        """Append records to the spool and count what a full spool dropped.

        The worker sets aside what cannot be framed (:func:`frame_error`) before handing it over.
        """
        with self._lock:
            dropped = self.spool.append(records) if records else 0
            dropped += self.spool.take_dropped_oldest()
            self.spool.tick()
        if dropped:
            self.status[SPOOL_DROPPED] += dropped
            metrics.EVENTS_DROPPED.labels("spool_full").inc(dropped)
        self._publish_state()
        self._wake.set()

    def _read_pipe(self) -> None:
        assert self.conn is not None
        try:
            while True:
                blob = self.conn.recv_bytes()
                if not blob:  # the worker's close marker
                    break
                self.append([(k, self._enrich(v, s)) for k, v, s in decode_batch(blob)])
        except (EOFError, OSError):
            log.warning("event pipe closed without a close marker (the worker died?); flushing the spool")
        finally:
            self._eof.set()
            self._wake.set()

    def _enrich(self, value: bytes, sample: bytes) -> bytes:
        """Return the event with the features of its text, or unchanged when it has no sample (or is not JSON)."""
        if not sample:
            return value
        try:
            return with_text_features(value, sample, self.languages)
        except Exception as exc:  # sent without those features rather than not at all
            log.warning("could not add text features to an event (%s: %s)", type(exc).__name__, exc)
            return value

    # -- shipping ---------------------------------------------------------------------------------
    def ship_once(self) -> bool:
        """Send one batch from the spool; return True when it was acknowledged or set aside (or there was nothing).

        After a batch was refused for one of its records, the next records go one at a time, so
        that only the offending record is set aside.
        """
        with self._lock:
            records, pos = self.spool.read(1 if self._isolate else self.cfg.batch_max_events)
        if not records:
            self._isolate = 0
            return True
        t0 = time.perf_counter()
        try:
            self.sink.send(records)
        except Exception as exc:
            reason = record_error_reason(exc)
            if reason is not None and len(records) > 1:
                log.warning("Kafka refused a batch of %d events (%s); sending them one at a time",
                            len(records), type(exc).__name__)
                self._isolate = len(records)
                return True  # not a connection problem: go on at once, one record at a time
            if reason is not None:
                (key, value), = records
                self.dead_letters.add(reason, key, value, f"{type(exc).__name__}: {exc}")
                self._acknowledged(pos, 1, t0, count_sent=False)
                return True
            name = type(exc.cause if isinstance(exc, SinkUnavailable) else exc).__name__
            metrics.EVENT_SEND_ERRORS.labels(name).inc()
            if self.connected or self.last_error != name:
                log.warning("Kafka unreachable (%s: %s); events are spooled to %s", name, exc, self.spool.dir)
            self._set_error(name)
            self.set_connected(False)
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.cfg.reconnect_backoff_max_ms / 1000)
            return False
        self._acknowledged(pos, len(records), t0)
        return True

    def _acknowledged(self, pos: Any, n: int, t0: float, count_sent: bool = True) -> None:
        """Advance the spool past ``n`` records that Kafka acknowledged (or that were set aside)."""
        metrics.EVENT_SEND_SECONDS.observe(time.perf_counter() - t0)
        with self._lock:
            self.spool.commit(pos, n)
        self._isolate = max(0, self._isolate - n)
        if count_sent:
            self.status[SENT] += n
            metrics.EVENTS_SENT.inc(n)
        if not self.connected:
            log.info("Kafka reachable at %s; delivering spooled events", self.cfg.bootstrap_servers)
        self.set_connected(True)
        self._backoff = self.cfg.reconnect_backoff_ms / 1000
        self._publish_state()

    def run(self) -> None:
        """Ship until the pipe closes, then deliver what remains within ``flush_s``; then close the spool."""
        reader = threading.Thread(target=self._read_pipe, name="splitwatch-pipe-reader", daemon=True)
        if self.conn is not None:
            reader.start()
        else:
            self._eof.set()
        try:
            while not self._eof.is_set():
                pending = self.spool.pending_events
                wait = max(0.001, self._next_attempt - time.monotonic()) if pending else 1.0
                self._wake.wait(timeout=wait)
                self._wake.clear()
                while self.spool.pending_events and time.monotonic() >= self._next_attempt and not self._eof.is_set():
                    if not self.ship_once():
                        break
            if self.conn is not None:
                reader.join(5)
            deadline = time.monotonic() + self.flush_s
            while self.spool.pending_events and time.monotonic() < deadline:
                if not self.ship_once():
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            if self.spool.pending_events:
                log.warning("stopping with %d events in the spool %s; they are sent at the next start",
                            self.spool.pending_events, self.spool.dir)
        finally:
            self._publish_state()
            self.sink.close()
            self.spool.close()

    # -- state ------------------------------------------------------------------------------------
    def set_connected(self, value: bool) -> None:
        """Record whether Kafka took the last batch (the worker's /readyz and the gauge read it)."""
        self.connected = value
        self.status[CONNECTED] = 1.0 if value else 0.0
        if self.report:
            metrics.KAFKA_CONNECTED.labels(self.spool.dir.name).set(1 if value else 0)

    def _set_error(self, name: str) -> None:
        self.last_error = name
        self.error.value = name.encode()[: ERROR_BYTES - 1]

    def _publish_state(self) -> None:
        self.status[PENDING_EVENTS] = self.spool.pending_events
        self.status[PENDING_BYTES] = self.spool.pending_bytes
        if self.report:
            metrics.EVENTS_SPOOLED.set(self.spool.pending_events)
            metrics.SPOOL_BYTES.set(self.spool.pending_bytes)

    def drain(self, stop: threading.Event) -> None:
        """Ship until the spool is empty (retrying with back-off) or ``stop`` is set; then close it."""
        try:
            while self.spool.pending_events and not stop.is_set():
                if not self.ship_once():
                    stop.wait(max(0.0, self._next_attempt - time.monotonic()))
        finally:
            self.sink.close()
            self.spool.close()

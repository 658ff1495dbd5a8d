"""Event delivery to Kafka that never blocks a request and loses nothing it can keep.

The request path calls :meth:`EventPublisher.publish`, which only appends to a
bounded in-memory queue. One sender thread drains the queue into the on-disk
:class:`~service.spool.Spool` (write-ahead) and ships batches from the spool to
Kafka, advancing the spool's cursor only once Kafka acknowledged the batch.
So an outage, a broker restart or a proxy restart all replay from disk, in
order. Delivery is at least once: consumers deduplicate by ``event_id``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import metrics
from .config import KafkaConfig
from .spool import Record, Spool, SpoolLockedError

log = logging.getLogger(__name__)


def _producer_security(cfg: KafkaConfig) -> dict[str, Any]:
    """Return the kafka-python security settings of the config (credentials read from the environment)."""
    out: dict[str, Any] = {"security_protocol": cfg.security_protocol}
    if cfg.sasl_mechanism:
        out["sasl_mechanism"] = cfg.sasl_mechanism
        if cfg.sasl_username_env:
            out["sasl_plain_username"] = os.environ.get(cfg.sasl_username_env)
        if cfg.sasl_password_env:
            out["sasl_plain_password"] = os.environ.get(cfg.sasl_password_env)
    return out


def ensure_topic(cfg: KafkaConfig, timeout_ms: int = 5000) -> None:
    """Create the events topic if it does not exist; raises kafka errors when the broker is unreachable."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, client_id=f"{cfg.client_id}-admin",
                             request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                             **_producer_security(cfg))
    try:
        if cfg.topic in admin.list_topics():
            return
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(cfg.topic, num_partitions=cfg.topic_partitions, replication_factor=1)])
    finally:
        admin.close()


class KafkaSink:
    """Sends batches of records to the topic with a kafka-python producer, rebuilt after any failure."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.cfg = cfg
        self._producer: Any = None

    def _connect(self) -> Any:
        from kafka import KafkaProducer

        ensure_topic(self.cfg, timeout_ms=min(self.cfg.request_timeout_ms, 5000))
        # Idempotence is off: a broker restart loses the producer id and an idempotent producer then
        # fails every send until rebuilt. Ordering comes from sending one batch at a time; duplicates
        # from resending a failed batch are removed by event_id downstream.
        return KafkaProducer(
            bootstrap_servers=self.cfg.bootstrap_servers, client_id=self.cfg.client_id, acks="all",
            enable_idempotence=False, retries=0, linger_ms=self.cfg.linger_ms,
            request_timeout_ms=self.cfg.request_timeout_ms, max_block_ms=self.cfg.request_timeout_ms,
            bootstrap_timeout_ms=min(self.cfg.request_timeout_ms, 5000),
            reconnect_backoff_ms=50, reconnect_backoff_max_ms=self.cfg.reconnect_backoff_ms,
            **_producer_security(self.cfg))

    def send(self, records: list[Record]) -> None:
        """Send records and wait for every acknowledgement; raises on any failure."""
        if self._producer is None:
            self._producer = self._connect()
        try:
            futures = [self._producer.send(self.cfg.topic, key=k, value=v) for k, v in records]
            self._producer.flush(timeout=self.cfg.request_timeout_ms / 1000)
            for f in futures:
                f.get(timeout=0)  # raises the send's error, or KafkaTimeoutError if not acknowledged
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Close the producer, if any, without waiting for unsent records (they are still in the spool)."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=0)
            self._producer = None


class EventPublisher:
    """Bounded queue, spool writer thread and Kafka shipper thread; see the module docstring.

    The writer moves the queue to disk every ``linger_ms`` whatever Kafka does, so an outage
    never leaves events waiting in memory; the shipper alone waits on Kafka. They share the
    spool under a lock that is never held while talking to Kafka.
    """

    def __init__(self, cfg: KafkaConfig, spool_dir: str | Path | None = None, sink: Any = None) -> None:
        self.cfg = cfg
        self.spool_dir = Path(spool_dir or cfg.spool.dir)
        self._queue: deque[BaseModel] = deque()
        self._wake_writer = threading.Event()
        self._wake_shipper = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sink = sink or KafkaSink(cfg)
        self._spool: Spool | None = None
        self._threads: list[threading.Thread] = []
        self.connected = False
        self.last_error: str | None = None
        self.dropped = 0
        self.sent = 0
        self._next_attempt = 0.0
        self._flush_deadline = 0.0
        self._backoff = cfg.reconnect_backoff_ms / 1000

    # -- request path -----------------------------------------------------------------------------
    def publish(self, event: BaseModel) -> bool:
        """Queue an event for delivery without blocking; return False (and count it) when the queue is full."""
        if len(self._queue) >= self.cfg.queue_max_events:
            self.dropped += 1
            metrics.EVENTS_DROPPED.labels("queue_full").inc()
            return False
        self._queue.append(event)
        metrics.EVENTS_ENQUEUED.labels(event.type).inc()  # type: ignore[attr-defined]
        if len(self._queue) >= self.cfg.batch_max_events:
            self._wake_writer.set()
        return True

    @property
    def queued(self) -> int:
        """Return the number of events in the in-memory queue."""
        return len(self._queue)

    @property
    def spooled(self) -> int:
        """Return the number of events on disk not yet acknowledged by Kafka."""
        return self._spool.pending_events if self._spool else 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the spool (taking its lock) and start the writer and shipper threads."""
        self._spool = Spool(self.spool_dir, max_bytes=self.cfg.spool.max_bytes,
                            segment_bytes=self.cfg.spool.segment_bytes, fsync=self.cfg.spool.fsync,
                            fsync_interval_ms=self.cfg.spool.fsync_interval_ms,
                            full_policy=self.cfg.spool.full_policy)
        self._set_connected(False)
        self._threads = [threading.Thread(target=self._run_writer, name="splitwatch-spool-writer", daemon=True),
                         threading.Thread(target=self._run_shipper, name="splitwatch-kafka-shipper", daemon=True)]
        for t in self._threads:
            t.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop: move the queue to the spool, try to deliver for up to ``timeout`` s, then close the spool."""
        if not self._threads:
            return
        self._flush_deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake_writer.set()
        self._wake_shipper.set()
        for t in self._threads:
            t.join(timeout + 10)
        self._threads = []
        assert self._spool is not None
        if self._spool.pending_events:
            log.warning("shut down with %d events in the spool %s; they are sent at the next start",
                        self._spool.pending_events, self.spool_dir)
        self._update_gauges()
        self._sink.close()
        self._spool.close()

    # -- writer thread ----------------------------------------------------------------------------
    def _drain_to_spool(self) -> None:
        assert self._spool is not None
        records: list[Record] = []
        while self._queue:
            ev = self._queue.popleft()
            records.append((ev.key(), ev.to_json()))  # type: ignore[attr-defined]
        with self._lock:
            dropped = self._spool.append(records) if records else 0
            dropped += self._spool.take_dropped_oldest()
            self._spool.tick()
        if dropped:
            self.dropped += dropped
            metrics.EVENTS_DROPPED.labels("spool_full").inc(dropped)
        if records:
            self._wake_shipper.set()

    def _run_writer(self) -> None:
        linger = max(self.cfg.linger_ms / 1000, 0.001)
        try:
            while not self._stop.is_set():
                self._wake_writer.wait(timeout=linger)
                self._wake_writer.clear()
                self._drain_to_spool()
                self._update_gauges()
            self._drain_to_spool()
        except Exception:  # pragma: no cover - a bug here must be loud, not a silent stop of delivery
            log.exception("spool writer crashed; events stay queued in memory")
            raise
        finally:
            self._wake_shipper.set()

    # -- shipper thread ---------------------------------------------------------------------------
    def _ship(self) -> bool:
        """Send one batch from the spool; return True when it was acknowledged (or there was nothing)."""
        assert self._spool is not None
        with self._lock:
            records, pos = self._spool.read(self.cfg.batch_max_events)
        if not records:
            return True
        t0 = time.perf_counter()
        try:
            self._sink.send(records)
        except Exception as exc:  # any failure means: keep the batch on disk, retry later
            name = type(exc).__name__
            metrics.EVENT_SEND_ERRORS.labels(name).inc()
            if self.connected or self.last_error != name:
                log.warning("Kafka unreachable (%s: %s); events are spooled to %s", name, exc, self.spool_dir)
            self.last_error = name
            self._set_connected(False)
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.cfg.reconnect_backoff_max_ms / 1000)
            return False
        metrics.EVENT_SEND_SECONDS.observe(time.perf_counter() - t0)
        with self._lock:
            self._spool.commit(pos, len(records))
        self.sent += len(records)
        metrics.EVENTS_SENT.inc(len(records))
        if not self.connected:
            log.info("Kafka reachable at %s; delivering spooled events", self.cfg.bootstrap_servers)
        self._set_connected(True)
        self._backoff = self.cfg.reconnect_backoff_ms / 1000
        return True

    def _ship_pending(self) -> None:
        """Ship batches until the spool is empty, a send fails (backoff), or stop is asked."""
        assert self._spool is not None
        while self._spool.pending_events and time.monotonic() >= self._next_attempt and not self._stop.is_set():
            if not self._ship():
                return

    def _run_shipper(self) -> None:
        assert self._spool is not None
        try:
            while not self._stop.is_set():
                pending = self._spool.pending_events
                wait = max(0.001, self._next_attempt - time.monotonic()) if pending else 1.0
                self._wake_shipper.wait(timeout=wait)
                self._wake_shipper.clear()
                self._ship_pending()
            # Shutdown: once the writer has moved the whole queue to disk, deliver until the deadline.
            self._threads[0].join()
            while self._spool.pending_events and time.monotonic() < self._flush_deadline:
                if not self._ship():
                    time.sleep(min(0.2, max(0.0, self._flush_deadline - time.monotonic())))
        except Exception:  # pragma: no cover - a bug here must be loud, not a silent stop of delivery
            log.exception("Kafka shipper crashed; events stay in the spool")
            raise

    # -- gauges -----------------------------------------------------------------------------------
    def _set_connected(self, value: bool) -> None:
        self.connected = value
        metrics.KAFKA_CONNECTED.set(1 if value else 0)

    def _update_gauges(self) -> None:
        assert self._spool is not None
        metrics.EVENTS_QUEUED.set(len(self._queue))
        metrics.EVENTS_SPOOLED.set(self._spool.pending_events)
        metrics.SPOOL_BYTES.set(self._spool.pending_bytes)


def open_publisher(cfg: KafkaConfig, worker: int = 0) -> EventPublisher:
    """Return a started publisher whose spool is ``<spool.dir>/worker-<N>`` (the first free one from N)."""
    base = Path(cfg.spool.dir)
    for index in range(worker, worker + 64):
        pub = EventPublisher(cfg, base / f"worker-{index}")
        try:
            pub.start()
            return pub
        except SpoolLockedError:
            continue
    raise SpoolLockedError(f"no free spool directory under {base}")

"""Sending to Kafka: the sink every publisher uses (the proxy's shipper, drift, the control channel, the
guard, the demo), the outbox of background processes, and which errors are the records' fault."""

from __future__ import annotations

import contextlib
import logging
import struct
from typing import Any

from ..config import KafkaConfig
from .dead_letters import DeadLetterReason
from .kafka_client import ensure_topic, kafka_security_settings
from .spool import Record

log = logging.getLogger(__name__)


def record_error_reason(exc: BaseException) -> DeadLetterReason | None:
    """Return the dead-letter reason when ``exc`` is a property of the records sent, None when retriable.

    Kafka refuses a record for its size or its content: no retry can cure that. Anything else (the
    broker unreachable, timeouts, authorisation, leadership changes) is not the record's fault: the
    events stay in the spool and the send is retried.
    """
    from kafka import errors

    if isinstance(exc, SinkUnavailable):
        return None
    if isinstance(exc, errors.MessageSizeTooLargeError | errors.RecordListTooLargeError):
        return "too_large"
    if isinstance(exc, errors.InvalidRecordError | errors.CorruptRecordError
                  | errors.UnsupportedForMessageFormatError):
        return "rejected"
    if isinstance(exc, TypeError | ValueError | struct.error) and not isinstance(exc, errors.KafkaError):
        return "unserialisable"  # raised while the producer serialised or framed a record
    return None


class SinkUnavailable(Exception):
    """The sink could not connect to Kafka; ``cause`` is the error it got."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class KafkaSink:
    """Sends batches of records to a topic with a kafka-python producer, rebuilt after any failure.

    The events topic by default; ``topic`` (created with ``partitions`` and ``topic_configs`` if
    missing) for another one, such as the control topic.
    """

    def __init__(self, cfg: KafkaConfig, topic: str | None = None, partitions: int | None = None,
                 topic_configs: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.topic = topic or cfg.topic
        self._partitions = partitions
        self._topic_configs = topic_configs
        self._producer: Any = None

    def _connect(self) -> Any:
        from kafka import KafkaProducer

        from .key_partitioner import KeyHashPartitioner

        # A restarted broker may have lost the topic; auto-creation under concurrent produce was seen
        # to lose acknowledged writes, so the topic is created explicitly before producing.
        ensure_topic(self.cfg, timeout_ms=min(self.cfg.request_timeout_ms, 5000), topic=self.topic,
                     partitions=self._partitions, topic_configs=self._topic_configs)
        # Idempotence is off: a broker restart loses the producer id and an idempotent producer then
        # fails every send until rebuilt. Ordering comes from sending one batch at a time; duplicates
        # from resending a failed batch are removed by event_id downstream.
        return KafkaProducer(
            bootstrap_servers=self.cfg.bootstrap_servers, client_id=self.cfg.client_id, acks="all",
            enable_idempotence=False, retries=0, linger_ms=self.cfg.linger_ms,
            partitioner=KeyHashPartitioner(),  # DefaultPartitioner's choice, about half its cost (.key_partitioner)
            # kafka-python's own metrics (sensors per batch and request) are read by nothing here: the shipper's
            # counters are splitwatch's (docs/metrics.md); they were 6% of the shipper's profile
            metrics_enabled=False,
            request_timeout_ms=self.cfg.request_timeout_ms, max_block_ms=self.cfg.request_timeout_ms,
            bootstrap_timeout_ms=min(self.cfg.request_timeout_ms, 5000),
            reconnect_backoff_ms=50, reconnect_backoff_max_ms=self.cfg.reconnect_backoff_max_ms,
            # room for one event of kafka.max_event_bytes plus the request's overhead
            max_request_size=max(1_048_576, self.cfg.max_event_bytes + 65_536),
            **kafka_security_settings(self.cfg))

    def send(self, records: list[Record]) -> None:
        """Send records and wait for every acknowledgement; raises on any failure.

        A failure to connect is raised as :class:`SinkUnavailable`, so that it is never mistaken for
        a property of the records.
        """
        if self._producer is None:
            try:
                self._producer = self._connect()
            except Exception as exc:
                raise SinkUnavailable(exc) from exc
        try:
            futures = [self._producer.send(self.topic, key=k, value=v) for k, v in records]
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


class EventOutbox:
    """Events a background process publishes (drift verdicts, rollout changes), kept until Kafka takes them.

    Not the proxy's spool: these are few, and a process that cannot reach Kafka keeps them in memory
    and tries again at its next :meth:`flush`.
    """

    def __init__(self, sink: KafkaSink, what: str) -> None:
        self.sink = sink
        self.what = what  # "drift events", "control events": for the log line
        self.pending: list[Any] = []

    def append(self, event: Any) -> None:
        """Keep an event (anything with ``key()`` and ``to_json()``) for the next flush."""
        self.pending.append(event)

    def flush(self) -> None:
        """Send the pending events; keep them for the next try if Kafka fails."""
        if not self.pending:
            return
        try:
            self.sink.send([(e.key(), e.to_json()) for e in self.pending])
            self.pending.clear()
        except Exception as exc:  # the events wait for the next flush
            log.warning("could not publish %d %s (%s); retrying", len(self.pending), self.what, exc)

"""Kafka -> lake: the analyzer's consumer, in micro-batches, offsets committed after the lake write."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..config import Config
from ..delivery.kafka_client import connect_with_retry, consumer_connected, ensure_topic, kafka_security_settings
from .lake import Lake, Record

if TYPE_CHECKING:
    from ..status_server import Supervisor

log = logging.getLogger(__name__)
CATCH_UP_IDLE_S = 1.0


@dataclass
class IngestStats:
    """What one run of the ingester did."""

    events: int = 0
    invalid: int = 0
    batches: int = 0
    seconds: float = 0.0


class Ingestor:
    """Consumes the events topic with a consumer group and writes batches to the lake."""

    def __init__(self, cfg: Config, lake: Lake | None = None,
                 on_batch: Callable[[list[bytes]], None] | None = None) -> None:
        self.cfg = cfg
        self.on_batch = on_batch  # sees every batch once it is in the lake (the guard's fast path)
        self.lake = lake or Lake(cfg.analyzer.lake_dir, writer=True)
        self.next_offsets = self.lake.recover()
        self._consumer: Any = None

    def _connect(self, manual: bool) -> Any:
        """Return a consumer: in the consumer group, or (``manual``) assigned every partition by hand.

        A one-shot run must read every partition to the end; in a group it could be given only part
        of them (a killed predecessor stays a member until its session times out).
        """
        from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

        k, a = self.cfg.kafka, self.cfg.analyzer
        ensure_topic(k)
        consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-analyzer",
            group_id=None if manual else a.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=min(a.batch_max_events, 10_000),
            max_poll_interval_ms=a.max_poll_interval_ms, session_timeout_ms=min(10_000, a.max_poll_interval_ms),
            heartbeat_interval_ms=min(3_000, a.max_poll_interval_ms // 3), **kafka_security_settings(k))
        lake_offsets = self.next_offsets

        class SeekToLake(ConsumerRebalanceListener):
            """The lake, not Kafka's committed offsets, decides where each partition resumes."""

            def on_partitions_revoked(self, revoked: Any) -> None:
                pass

            def on_partitions_assigned(self, assigned: Any) -> None:
                for tp in assigned:
                    if tp.partition in lake_offsets:
                        consumer.seek(tp, lake_offsets[tp.partition])
                log.info("analyzer assigned partitions %s", sorted(tp.partition for tp in assigned))

        if manual:
            partitions = consumer.partitions_for_topic(k.topic) or set()
            tps = [TopicPartition(k.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            for tp in tps:
                if tp.partition in lake_offsets:
                    consumer.seek(tp, lake_offsets[tp.partition])
                else:
                    consumer.seek_to_beginning(tp)
        else:
            consumer.subscribe([k.topic], listener=SeekToLake())
        return consumer

    def _flush(self, pending: dict[int, list[Record]], stats: IngestStats) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        commit: dict[Any, Any] = {}
        written_values: list[bytes] = []
        for partition, records in pending.items():
            if not records:
                continue
            written, invalid = self.lake.write_batch(partition, records)
            stats.events += written
            stats.invalid += invalid
            metrics.ANALYZER_EVENTS_INGESTED.inc(written)
            if invalid:
                metrics.ANALYZER_INVALID_EVENTS.inc(invalid)
            written_values.extend(r.value for r in records)
            nxt = records[-1].offset + 1
            self.next_offsets[partition] = nxt
            commit[TopicPartition(self.cfg.kafka.topic, partition)] = OffsetAndMetadata(nxt, "", -1)
        pending.clear()
        stats.batches += 1
        if self.on_batch is not None and written_values:
            try:
                self.on_batch(written_values)
            except Exception:  # the guard must never stop the lake
                log.exception("the ingested batch's observer failed")
        if commit and self.cfg.analyzer.group_id and self._consumer.config.get("group_id"):
            try:
                self._consumer.commit(commit)
            except Exception as exc:  # the lake is the source of truth; Kafka's offsets are a convenience
                log.warning("could not commit offsets to Kafka (%s); the lake keeps the position", exc)

    def run(self, stop: threading.Event, until_caught_up: bool = False,
            supervisor: Supervisor | None = None) -> IngestStats:
        """Ingest until ``stop`` is set (or, with ``until_caught_up``, until the end offsets seen at start).

        With a ``supervisor`` (the live analyzer) an unreachable Kafka is retried with back-off, and
        progress and the connection state are reported to it; without one, the error is raised.
        """
        a = self.cfg.analyzer
        stats = IngestStats()
        t0 = time.perf_counter()
        consumer = connect_with_retry(lambda: self._connect(manual=until_caught_up), supervisor, stop,
                                      "analyzer ingest")
        if consumer is None:  # stopped while waiting for Kafka
            self.lake.close()
            return stats
        self._consumer = consumer
        targets: dict[int, int] | None = None
        pending: dict[int, list[Record]] = defaultdict(list)
        batch_started = 0.0
        last_record = time.monotonic()
        count = 0
        try:
            while not stop.is_set():
                polled = self._consumer.poll(timeout_ms=200, max_records=a.batch_max_events)
                if supervisor is not None:
                    supervisor.polled(lambda: consumer_connected(consumer))
                for tp, msgs in polled.items():
                    for m in msgs:
                        if m.offset < self.next_offsets.get(tp.partition, 0):
                            continue  # already in the lake
                        if count == 0:
                            batch_started = time.monotonic()
                        pending[tp.partition].append(Record(tp.partition, m.offset, m.value))
                        count += 1
                if count >= a.batch_max_events or (count and time.monotonic() - batch_started >= a.batch_max_seconds):
                    self._flush(pending, stats)
                    count = 0
                if polled:
                    last_record = time.monotonic()
                if until_caught_up:
                    if targets is None and self._consumer.assignment():
                        assigned = list(self._consumer.assignment())
                        targets = {tp.partition: end for tp, end in self._consumer.end_offsets(assigned).items()}
                    # Caught up: every partition at its end offset *and* a quiet second. The end offsets
                    # alone are not enough: Tansu answers ListOffsets(latest) with the base offset of the
                    # last record batch, short of the high watermark (seen in tests/test_analyzer.py).
                    if (targets is not None and time.monotonic() - last_record >= CATCH_UP_IDLE_S
                            and all(self._position(p) >= end for p, end in targets.items())):
                        break
            if count:
                self._flush(pending, stats)
        finally:
            self._consumer.close(autocommit=False)
            self.lake.close()
        stats.seconds = time.perf_counter() - t0
        return stats

    def _position(self, partition: int) -> int:
        from kafka import TopicPartition

        return self._consumer.position(TopicPartition(self.cfg.kafka.topic, partition))

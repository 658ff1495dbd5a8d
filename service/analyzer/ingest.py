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
from .lake import BatchConflictError, Lake, Record

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
        self.lake = lake or Lake(cfg.analyzer.lake_dir)
        self.next_offsets: dict[int, int] = {}  # of the partitions this analyzer owns, from the lake
        self.assigned: frozenset[int] = frozenset()
        self._pending: dict[int, list[Record]] = defaultdict(list)
        self._stats = IngestStats()
        self._consumer: Any = None

    def leads(self) -> bool:
        """Return True when this analyzer owns partition 0 of the events topic: the replica that runs the
        live analysis and the guard (exactly one per consumer group, as Kafka assigns partitions)."""
        return 0 in self.assigned

    def _take(self, consumer: Any, partitions: list[Any]) -> None:
        """Start owning ``partitions``: recover them in the lake and seek each to the lake's position.

        The lake, not Kafka's committed offsets, decides where a partition resumes; a partition the lake
        has never seen starts at the beginning of the topic.
        """
        recovered = self.lake.recover(tp.partition for tp in partitions)
        for tp in partitions:
            self._pending.pop(tp.partition, None)
            if tp.partition in recovered:
                self.next_offsets[tp.partition] = recovered[tp.partition]
                consumer.seek(tp, recovered[tp.partition])
            else:
                self.next_offsets.pop(tp.partition, None)
                consumer.seek_to_beginning(tp)
        self.assigned = frozenset(self.assigned | {tp.partition for tp in partitions})

    def _give_up(self, partitions: list[Any]) -> None:
        """Stop owning ``partitions``: write what was read of them first (another replica takes them next)."""
        gone = {tp.partition for tp in partitions}
        leaving = {p: self._pending.pop(p) for p in list(self._pending) if p in gone}
        if leaving:
            self._flush(leaving, self._stats)
        self.assigned = frozenset(self.assigned - gone)
        for p in gone:
            self.next_offsets.pop(p, None)

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
        ingestor = self

        class OwnPartitions(ConsumerRebalanceListener):
            """Partitions come and go with the group's other replicas: see :meth:`_take` and :meth:`_give_up`."""

            def on_partitions_revoked(self, revoked: Any) -> None:
                ingestor._give_up(list(revoked))

            def on_partitions_assigned(self, assigned: Any) -> None:
                ingestor._take(consumer, list(assigned))
                log.info("analyzer assigned partitions %s%s", sorted(tp.partition for tp in assigned),
                         " (leader: runs the live analysis and the guard)" if ingestor.leads() else "")

        self._consumer = consumer
        if manual:
            partitions = consumer.partitions_for_topic(k.topic) or set()
            tps = [TopicPartition(k.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            self._take(consumer, tps)
        else:
            consumer.subscribe([k.topic], listener=OwnPartitions())
        return consumer

    def _flush(self, pending: dict[int, list[Record]], stats: IngestStats) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        commit: dict[Any, Any] = {}
        written_values: list[bytes] = []
        for partition, records in list(pending.items()):
            if not records:
                continue
            tp = TopicPartition(self.cfg.kafka.topic, partition)
            try:
                written, invalid = self.lake.write_batch(partition, records)
            except BatchConflictError as exc:
                # another replica owned the partition meanwhile: its batch stands, read on from the lake
                log.warning("%s; resuming partition %d from the lake", exc, partition)
                position = self.lake.recover([partition]).get(partition, 0)
                self.next_offsets[partition] = position
                if partition in self.assigned:
                    self._consumer.seek(tp, position)
                continue
            stats.events += written
            stats.invalid += invalid
            metrics.ANALYZER_EVENTS_INGESTED.inc(written)
            if invalid:
                metrics.ANALYZER_INVALID_EVENTS.inc(invalid)
            written_values.extend(r.value for r in records)
            nxt = records[-1].offset + 1
            self.next_offsets[partition] = nxt
            commit[tp] = OffsetAndMetadata(nxt, "", -1)
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
        stats = self._stats = IngestStats()
        t0 = time.perf_counter()
        consumer = connect_with_retry(lambda: self._connect(manual=until_caught_up), supervisor, stop,
                                      "analyzer ingest")
        if consumer is None:  # stopped while waiting for Kafka
            return stats
        self._consumer = consumer
        targets: dict[int, int] | None = None
        pending = self._pending
        batch_started = 0.0
        last_record = time.monotonic()
        count = 0
        try:
            while not stop.is_set():
                polled = self._consumer.poll(timeout_ms=200, max_records=a.batch_max_events)
                if supervisor is not None:
                    supervisor.polled(lambda: consumer_connected(consumer))
                if self._add_polled(polled) and count == 0:
                    batch_started = time.monotonic()
                count = sum(len(r) for r in pending.values())  # a rebalance may have taken some
                if count >= a.batch_max_events or (count and time.monotonic() - batch_started >= a.batch_max_seconds):
                    self._flush(pending, stats)
                    count = 0
                if polled:
                    last_record = time.monotonic()
                if until_caught_up:
                    targets = targets or self._end_offsets()
                    if self._caught_up(targets, last_record):
                        break
            if count:
                self._flush(pending, stats)
        finally:
            self.assigned = frozenset()
            self._consumer.close(autocommit=False)
        stats.seconds = time.perf_counter() - t0
        return stats

    def _add_polled(self, polled: dict[Any, list[Any]]) -> bool:
        """Add the polled records not yet in the lake to the pending batch; return True when any was added."""
        added = False
        for tp, msgs in polled.items():
            for m in msgs:
                if m.offset < self.next_offsets.get(tp.partition, 0):
                    continue  # already in the lake
                self._pending[tp.partition].append(Record(tp.partition, m.offset, m.value))
                added = True
        return added

    def _end_offsets(self) -> dict[int, int] | None:
        """Return the end offset of each assigned partition (None before the assignment)."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return None
        return {tp.partition: end for tp, end in self._consumer.end_offsets(assigned).items()}

    def _caught_up(self, targets: dict[int, int] | None, last_record: float) -> bool:
        """Return True when every partition is at its end offset *and* a quiet second has passed. The end
        offsets alone are not enough: Tansu answers ListOffsets(latest) with the base offset of the last
        record batch, short of the high watermark (seen in tests/test_analyzer.py)."""
        return (targets is not None and time.monotonic() - last_record >= CATCH_UP_IDLE_S
                and all(self._position(p) >= end for p, end in targets.items()))

    def _position(self, partition: int) -> int:
        from kafka import TopicPartition

        return self._consumer.position(TopicPartition(self.cfg.kafka.topic, partition))

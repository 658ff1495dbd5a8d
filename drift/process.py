"""``splitwatch drift``: exposures and responses from Kafka -> drift monitors -> /metrics, drift events -> Kafka.

One drift detector reads every partition of the events topic (assigned by hand, no consumer-group
join): its windows must see all units, which a group would split between replicas. Where it
resumes is its own: the next offset of each partition is saved in ``drift.state_dir`` (every few
seconds and at shutdown); a detector without saved positions starts at the beginning of the topic,
so its reference is the phase's first exposures that Kafka still retains.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from splitwatch.service import metrics
from splitwatch.service.config import Config
from splitwatch.service.delivery.kafka_client import (
    connect_with_retry,
    consumer_connected,
    ensure_topic,
    kafka_security_settings,
    wait_for_partitions,
)
from splitwatch.service.delivery.kafka_sink import EventOutbox, KafkaSink
from splitwatch.service.status_server import Supervisor, start_status_server

from .monitor import ExperimentMonitor

log = logging.getLogger(__name__)
SEEN_IDS = 200_000  # recent event ids kept for deduplication (delivery is at least once)
SAVE_POSITIONS_S = 5.0


class DriftService:
    """Routes exposure events to each experiment's monitor; publishes drift events, retrying on failure."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.sink = KafkaSink(cfg.kafka)
        self.outbox = EventOutbox(self.sink, "drift events")
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.monitors = {e.key: ExperimentMonitor(e.key, e.phase, cfg.drift, self.outbox.append)
                         for e in cfg.experiments}
        self.phases = {e.key: e.phase for e in cfg.experiments}

        self.positions_path = Path(cfg.drift.state_dir) / f"positions-{cfg.kafka.topic}.json"
        self.positions: dict[int, int] = self._load_positions()
        self._saved_at = 0.0

    def _load_positions(self) -> dict[int, int]:
        try:
            return {int(p): int(o) for p, o in json.loads(self.positions_path.read_text()).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError) as exc:
            log.warning("drift: unreadable positions file %s (%s); reading the topic from the beginning",
                        self.positions_path, exc)
            return {}

    def save_positions(self, force: bool = False) -> None:
        """Write the next offset of each partition to the state directory (every few seconds, or ``force``)."""
        now = time.monotonic()
        if not self.positions or (not force and now - self._saved_at < SAVE_POSITIONS_S):
            return
        self._saved_at = now
        self.positions_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.positions_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(p): o for p, o in sorted(self.positions.items())}))
        os.replace(tmp, self.positions_path)

    def status(self) -> dict[str, Any]:
        """Return each experiment's watch state, for /readyz."""
        return {key: m.status() for key, m in self.monitors.items()}

    def handle(self, raw: bytes) -> None:
        """Take one Kafka message: feed a new, unforced exposure or response to its experiment's monitor."""
        try:
            ev = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return  # the analyzer keeps invalid messages; the drift detector only needs exposures
        if not isinstance(ev, dict) or ev.get("type") not in ("exposure", "response") or ev.get("forced"):
            return
        monitor = self.monitors.get(ev.get("experiment", ""))
        if monitor is None or ev.get("phase") != self.phases[monitor.experiment]:
            return
        event_id = str(ev.get("event_id"))
        if event_id in self._seen:
            return
        self._seen[event_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        if ev["type"] == "exposure":
            monitor.add(ev.get("arm"), ev.get("features") or {})
        elif isinstance(ev.get("arm"), str):
            monitor.add_response(ev["arm"], ev)

    def _connect(self) -> Any:
        """Return a consumer assigned every partition, each at its saved position (else the beginning)."""
        from kafka import KafkaConsumer, TopicPartition

        k = self.cfg.kafka
        ensure_topic(k)
        consumer = KafkaConsumer(bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-drift",
                                 group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                 **kafka_security_settings(k))
        try:
            partitions = wait_for_partitions(consumer, k.topic, 30, poll_s=0.5)
            if not partitions:
                raise RuntimeError(f"no partitions of topic {k.topic} in the broker's metadata")
            tps = [TopicPartition(k.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            for tp in tps:
                if tp.partition in self.positions:
                    consumer.seek(tp, self.positions[tp.partition])
                else:
                    consumer.seek_to_beginning(tp)
            log.info("drift detector reading partitions %s of %s (saved positions: %s)",
                     sorted(partitions), k.topic, self.positions or "none, from the beginning")
        except Exception:
            consumer.close()
            raise
        return consumer

    def run(self, stop: threading.Event, supervisor: Supervisor | None = None) -> None:
        """Consume until ``stop`` is set; with a ``supervisor``, retry an unreachable Kafka and report progress."""
        consumer = connect_with_retry(self._connect, supervisor, stop, "drift detector")
        if consumer is None:
            return
        try:
            while not stop.is_set():
                for tp, records in consumer.poll(timeout_ms=500).items():
                    for r in records:
                        self.handle(r.value)
                        self.positions[tp.partition] = r.offset + 1
                self.outbox.flush()
                self.save_positions()
                if supervisor is not None:
                    supervisor.polled(lambda: consumer_connected(consumer))
        finally:
            consumer.close()
            self.outbox.flush()
            self.save_positions(force=True)


def run_drift(cfg: Config, host: str | None = None, port: int | None = None) -> int:
    """Run the drift detector until SIGTERM/SIGINT, with its gauges on /metrics and /healthz, /readyz.

    The consumer loop retries an unreachable Kafka with back-off and is restarted if it fails; the
    monitors (windows, references) live on across restarts.
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service = DriftService(cfg)
    group = cfg.drift.group_id
    supervisor = Supervisor("drift-consumer", lambda sup: service.run(stop, sup), stop,
                            metrics.DRIFT_KAFKA_CONNECTED.labels(group),
                            metrics.DRIFT_LOOP_RESTARTS.labels(group)).start()
    server = start_status_server(host or cfg.drift.host, cfg.drift.port if port is None else port,
                                 metrics.DRIFT_REGISTRY, [supervisor],
                                 details=lambda: {"experiments": service.status()})
    log.info("drift detector: metrics on http://%s:%d/metrics", host or cfg.drift.host, server.server_address[1])
    while not stop.is_set():
        stop.wait(0.5)
    supervisor.thread.join(30)
    service.sink.close()
    server.shutdown()
    return 0

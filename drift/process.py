"""``splitwatch drift``: exposures from Kafka -> drift monitors -> /metrics, drift events -> Kafka."""

from __future__ import annotations

import logging
import signal
import threading
from collections import OrderedDict
from typing import Any

import orjson

from splitwatch.service import metrics
from splitwatch.service.config import Config
from splitwatch.service.delivery.kafka_client import (
    connect_with_retry,
    consumer_connected,
    ensure_topic,
    kafka_security_settings,
)
from splitwatch.service.delivery.shipper import EventOutbox, KafkaSink
from splitwatch.service.status_server import Supervisor, start_status_server

from .monitor import ExperimentMonitor

log = logging.getLogger(__name__)
SEEN_IDS = 200_000  # recent event ids kept for deduplication (delivery is at least once)


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

    def handle(self, raw: bytes) -> None:
        """Take one Kafka message: feed it to its experiment's monitor if it is a new, unforced exposure."""
        try:
            ev = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return  # the analyzer keeps invalid messages; the drift detector only needs exposures
        if not isinstance(ev, dict) or ev.get("type") != "exposure" or ev.get("forced"):
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
        monitor.add(ev.get("arm"), ev.get("features") or {})

    def _connect(self) -> Any:
        from kafka import KafkaConsumer

        k, d = self.cfg.kafka, self.cfg.drift
        ensure_topic(k)
        return KafkaConsumer(
            k.topic, bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-drift", group_id=d.group_id,
            auto_offset_reset="earliest", enable_auto_commit=True, max_poll_interval_ms=d.max_poll_interval_ms,
            session_timeout_ms=min(10_000, d.max_poll_interval_ms),
            heartbeat_interval_ms=min(3_000, d.max_poll_interval_ms // 3), **kafka_security_settings(k))

    def run(self, stop: threading.Event, supervisor: Supervisor | None = None) -> None:
        """Consume until ``stop`` is set; with a ``supervisor``, retry an unreachable Kafka and report progress."""
        consumer = connect_with_retry(self._connect, supervisor, stop, "drift detector")
        if consumer is None:
            return
        try:
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=500).values():
                    for r in records:
                        self.handle(r.value)
                self.outbox.flush()
                if supervisor is not None:
                    supervisor.polled(lambda: consumer_connected(consumer))
        finally:
            consumer.close()
            self.outbox.flush()
            self.sink.close()


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
                                 metrics.DRIFT_REGISTRY, [supervisor])
    log.info("drift detector: metrics on http://%s:%d/metrics", host or cfg.drift.host, server.server_address[1])
    while not stop.is_set():
        stop.wait(0.5)
    supervisor.thread.join(30)
    server.shutdown()
    return 0

"""Reading the event topic back from Kafka: every event from the beginning, schema-checked."""

from __future__ import annotations

import json
import time
from typing import Any

from ..events import parse_event
from .kafka_client import wait_for_partitions


def read_events(bootstrap: str, topic: str, expect: int | None = None, timeout: float = 20.0,
                idle: float = 2.0) -> list[dict[str, Any]]:
    """Return every event on ``topic`` (as dicts, schema-checked), read from the beginning.

    Stops when ``expect`` events were read, or after ``idle`` s with nothing new, or at ``timeout``.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=int(idle * 1000))
    try:
        deadline = time.monotonic() + timeout
        parts = wait_for_partitions(consumer, topic, timeout)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    parse_event(r.value)  # every message must match the schema
                    ev = json.loads(r.value)
                    ev["_key"] = r.key.decode() if r.key else None
                    ev["_partition"] = r.partition
                    out.append(ev)
                    last_new = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last_new > idle:
                break
        return out
    finally:
        consumer.close()


def unique_by_event_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return events deduplicated by ``event_id`` (what every consumer does)."""
    return {e["event_id"]: e for e in events}

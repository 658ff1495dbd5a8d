"""The control channel: the control topic read into a :class:`StateTable`, and changes published to it.

Each proxy worker and the analyzer hold one :class:`KafkaControl`. Its thread reads the control
topic (one partition, compacted, key = experiment) from the beginning with no consumer group, so
every reader sees every change, and keeps reading: a change reaches every worker within a poll
(0.2 s) of its write. What it applies is cached in ``<state_dir>/control-state.json``; a worker that
cannot reach Kafka at start serves from that cache and says so (``status()["source"]``).

With ``kafka.enabled: false`` there is no topic: :class:`FileControl` keeps the same state in the
cache file, which every worker of the replica polls.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from ..config import KafkaConfig
from ..delivery.kafka_client import consumer_connected, ensure_topic, kafka_security_settings
from ..delivery.kafka_sink import KafkaSink
from .state import ExperimentState, StateTable, parse_state

log = logging.getLogger(__name__)
CACHE_FILE = "control-state.json"
POLL_MS = 200
TOPIC_CONFIGS = {"cleanup.policy": "compact"}
RECONNECT_AFTER_S = 10.0  # a consumer cut off this long is rebuilt (a restarted broker may have lost the topic)


class ControlUnavailable(RuntimeError):
    """The control topic could not be written: the change was not made (or its fate is unknown)."""


class Control(Protocol):
    """What the proxy and the guard need from a control channel."""

    table: StateTable

    def start(self) -> Control: ...
    def stop(self) -> None: ...
    def publish(self, state: ExperimentState) -> None: ...
    def apply(self, state: ExperimentState, save: bool = True) -> bool: ...
    def wait_caught_up(self, timeout: float) -> bool: ...
    def status(self) -> dict[str, Any]: ...


def wait_applied(control: Control, state: ExperimentState, timeout: float) -> ExperimentState | None:
    """Return the state in force once it is ``state`` or newer, or None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        current = control.table.get(state.experiment, state.phase)
        if current is not None and current.revision >= state.revision:
            return current
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


class _Base:
    def __init__(self, table: StateTable, cache_dir: str | Path | None,
                 on_apply: Callable[[ExperimentState], None] | None) -> None:
        self.table = table
        self.cache_path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
        self.on_apply = on_apply
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.from_cache = 0
        self.applied = 0
        self.ignored = 0
        if self.cache_path is not None:
            self.from_cache = self.table.load(self.cache_path)
            for state in self.table.states.values():
                self._notify(state)

    def _notify(self, state: ExperimentState) -> None:
        if self.on_apply is not None:
            try:
                self.on_apply(state)
            except Exception:  # a metric or log callback must never stop the channel
                log.exception("control: on_apply callback failed")

    def apply(self, state: ExperimentState, save: bool = True) -> bool:
        """Apply a state (if newer), cache it and notify; return True when it was applied."""
        with self.lock:
            if not self.table.apply(state):
                self.ignored += 1
                return False
            self.applied += 1
            if save and self.cache_path is not None:
                try:
                    self.table.save(self.cache_path)
                except OSError as exc:
                    log.error("control: cannot write the state cache %s: %s", self.cache_path, exc)
        self._notify(state)
        return True

    def stop(self) -> None:
        """Stop the channel's thread."""
        self.stopping.set()


class FileControl(_Base):
    """The state in the cache file only (``kafka.enabled: false``): every worker of a replica polls it."""

    def __init__(self, table: StateTable, cache_dir: str | Path,
                 on_apply: Callable[[ExperimentState], None] | None = None) -> None:
        super().__init__(table, cache_dir, on_apply)
        self._mtime: int | None = None

    def start(self) -> FileControl:
        """Start polling the file every second; return self."""
        threading.Thread(target=self._run, name="splitwatch-control-file", daemon=True).start()
        return self

    def _run(self) -> None:
        assert self.cache_path is not None
        while not self.stopping.wait(1.0):
            try:
                mtime = self.cache_path.stat().st_mtime_ns
            except OSError:
                continue
            if mtime != self._mtime:
                self._mtime = mtime
                fresh = StateTable()
                fresh.load(self.cache_path)
                for state in fresh.states.values():
                    self.apply(state, save=False)

    def publish(self, state: ExperimentState) -> None:
        """Apply the change here and write it to the file the other workers poll."""
        self.apply(state)

    def wait_caught_up(self, timeout: float) -> bool:
        """Return True: the file was read at start."""
        return True

    def status(self) -> dict[str, Any]:
        """Return the channel's state for /readyz."""
        return {"source": "file", "connected": None, "caught_up": True, "applied": self.applied,
                "path": str(self.cache_path)}


class KafkaControl(_Base):
    """The control topic, read in a thread into the table and written by :meth:`publish`."""

    def __init__(self, kafka: KafkaConfig, table: StateTable, cache_dir: str | Path | None = None,
                 on_apply: Callable[[ExperimentState], None] | None = None, name: str = "proxy",
                 on_connected: Callable[[bool], None] | None = None) -> None:
        super().__init__(table, cache_dir, on_apply)
        self.kafka = kafka
        self.name = name
        self.on_connected = on_connected
        self.connected = False
        self.caught_up = threading.Event()
        self.last_error: str | None = None
        # one partition (a total order of changes), compacted (the newest state per experiment stays)
        self._sink = KafkaSink(kafka, kafka.control_topic, partitions=1, topic_configs=TOPIC_CONFIGS)
        self._sink_lock = threading.Lock()  # admin calls of one worker may publish concurrently
        self._thread = threading.Thread(target=self._run, name=f"splitwatch-control-{name}", daemon=True)

    def start(self) -> KafkaControl:
        """Start reading the control topic; return self."""
        self._thread.start()
        return self

    def wait_caught_up(self, timeout: float) -> bool:
        """Wait until the topic was read to its end once; return whether it was."""
        return self.caught_up.wait(timeout)

    def status(self) -> dict[str, Any]:
        """Return the channel's state for /readyz: where the state in force comes from, and Kafka's state."""
        source = "topic" if self.caught_up.is_set() else ("cache" if self.from_cache else "config")
        return {"source": source, "connected": self.connected, "caught_up": self.caught_up.is_set(),
                "applied": self.applied, "ignored_stale": self.ignored, "last_error": self.last_error,
                "topic": self.kafka.control_topic}

    def _set_connected(self, value: bool, error: str | None = None) -> None:
        if value != self.connected:
            log.info("control topic %s: %s", self.kafka.control_topic,
                     "reachable" if value else f"unreachable ({error}); the state in force stays")
        self.connected = value
        self.last_error = None if value else error
        if self.on_connected is not None:
            self.on_connected(value)

    def _connect(self) -> Any:
        from kafka import KafkaConsumer, TopicPartition

        k = self.kafka
        ensure_topic(k, timeout_ms=min(k.request_timeout_ms, 5000), topic=k.control_topic, partitions=1,
                     topic_configs=TOPIC_CONFIGS)
        consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-control-{self.name}", group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest", request_timeout_ms=max(k.request_timeout_ms, 1000),
            reconnect_backoff_ms=k.reconnect_backoff_ms, reconnect_backoff_max_ms=k.reconnect_backoff_max_ms,
            **kafka_security_settings(k))
        try:
            deadline = time.monotonic() + 10
            parts: set[int] | None = None
            while not parts and time.monotonic() < deadline and not self.stopping.is_set():
                parts = consumer.partitions_for_topic(k.control_topic)
                if not parts:
                    consumer.topics()  # refresh the metadata; the topic may be being created
                    time.sleep(0.1)
            if not parts:
                raise ControlUnavailable(f"control topic {k.control_topic} has no partitions")
            tps = [TopicPartition(k.control_topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            return consumer
        except Exception:
            consumer.close()
            raise

    def _run(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            try:
                consumer = self._connect()
            except Exception as exc:
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
                self.stopping.wait(min(0.5 * 2 ** min(attempt, 6), 10.0))
                attempt += 1
                continue
            attempt = 0
            self._set_connected(True)
            try:
                self._consume(consumer)
            except Exception as exc:
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
                log.warning("control topic reader failed (%s); reconnecting", exc)
            finally:
                with contextlib.suppress(Exception):
                    consumer.close()

    def _consume(self, consumer: Any) -> None:
        next_check = 0.0
        lost_since: float | None = None
        while not self.stopping.is_set():
            polled = consumer.poll(timeout_ms=POLL_MS)
            for records in polled.values():
                for r in records:
                    self._handle(r.value)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                up = consumer_connected(consumer)
                self._set_connected(up, None if up else "broker unreachable")
                lost_since = None if up else (lost_since or now)
                if lost_since is not None and now - lost_since > RECONNECT_AFTER_S:
                    return  # rebuild the consumer: the broker may have come back without the topic
            if not polled and not self.caught_up.is_set() and self._at_end(consumer):
                self.caught_up.set()
                log.info("control topic %s read to its end: %d states in force", self.kafka.control_topic,
                         len(self.table.states))

    @staticmethod
    def _at_end(consumer: Any) -> bool:
        """Return True when every assigned partition's position has reached the end offset."""
        assigned = list(consumer.assignment())
        ends = consumer.end_offsets(assigned)
        return all(consumer.position(tp) >= end for tp, end in ends.items())

    def _handle(self, raw: bytes | None) -> None:
        if raw is None:
            return  # a tombstone: nothing to apply (states are never deleted)
        try:
            state = parse_state(raw)
        except (ValidationError, ValueError) as exc:
            log.error("control topic: ignoring an invalid message (%s)", str(exc).splitlines()[0])
            return
        self.apply(state)

    def publish(self, state: ExperimentState) -> None:
        """Write a change to the control topic and wait for Kafka's acknowledgement.

        Raises :class:`ControlUnavailable` when Kafka does not acknowledge it: the change may then
        not have been made (or, if only the acknowledgement was lost, it will apply). A duplicate
        (a retry whose first try did land) is harmless: it carries the same revision.
        """
        with self._sink_lock:
            try:
                self._sink.send([(state.experiment.encode(), state.to_json())])
            except Exception as exc:  # the sink closed its producer; the next publish builds a new one
                raise ControlUnavailable(f"control topic {self.kafka.control_topic} unreachable: "
                                         f"{type(exc).__name__}: {exc}") from exc

    def stop(self) -> None:
        """Stop reading and close the producer."""
        super().stop()
        with self._sink_lock:
            self._sink.close()
        self._thread.join(2)

"""Kafka client settings, topic creation and connection helpers, shared by the shipper, the analyzer and drift."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import KafkaConfig

if TYPE_CHECKING:
    from ..status_server import Supervisor

log = logging.getLogger(__name__)
T = TypeVar("T")


def kafka_security_settings(cfg: KafkaConfig) -> dict[str, Any]:
    """Return the kafka-python security settings of the config (credentials read from the environment)."""
    out: dict[str, Any] = {"security_protocol": cfg.security_protocol}
    if cfg.sasl_mechanism:
        out["sasl_mechanism"] = cfg.sasl_mechanism
        if cfg.sasl_username_env:
            out["sasl_plain_username"] = os.environ.get(cfg.sasl_username_env)
        if cfg.sasl_password_env:
            out["sasl_plain_password"] = os.environ.get(cfg.sasl_password_env)
    return out


def ensure_topic(cfg: KafkaConfig, timeout_ms: int = 5000, *, topic: str | None = None,
                 partitions: int | None = None, topic_configs: dict[str, str] | None = None) -> None:
    """Create the events topic (or ``topic``) if it does not exist; raises kafka errors if Kafka is unreachable."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, client_id=f"{cfg.client_id}-admin",
                             request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                             **kafka_security_settings(cfg))
    try:
        name = topic or cfg.topic
        if name in admin.list_topics():
            return
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name, num_partitions=partitions or cfg.topic_partitions,
                                          replication_factor=1, topic_configs=topic_configs or {})])
    finally:
        admin.close()


def wait_for_partitions(consumer: Any, topic: str, timeout_s: float, poll_s: float = 0.2) -> set[int]:
    """Return the partitions of ``topic`` once the consumer's metadata knows them (empty at the timeout).

    Right after a topic is created the metadata may have no entry for it (None) or no partitions
    yet (an empty set): ask again, refreshing the metadata, until ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts or time.monotonic() >= deadline:
            return set(parts or ())
        time.sleep(poll_s)
        consumer.topics()  # refreshes the cluster metadata


def consumer_connected(consumer: Any) -> bool:
    """Return True while the consumer holds a live connection to at least one broker.

    kafka-python's public ``bootstrap_connected()`` stays False after bootstrapping whatever the
    brokers' state, so this asks its client (``_client``, kafka-python's own attribute) about the
    brokers of the cluster metadata.
    """
    client = consumer._client
    return any(client.connected(b.node_id) for b in client.cluster.brokers())


def connect_with_retry(connect: Callable[[], T], supervisor: Supervisor | None, stop: threading.Event,
                       what: str) -> T | None:
    """Return ``connect()``'s result, retrying with the supervisor's back-off while Kafka is unreachable.

    Without a supervisor (one-shot runs) the first failure is raised. Returns None when ``stop`` is
    set before a connection was made.
    """
    attempt = 0
    while not stop.is_set():
        try:
            result = connect()
        except Exception as exc:
            if supervisor is None:
                raise
            if attempt == 0:
                log.warning("%s: Kafka unreachable (%s: %s); retrying with back-off", what, type(exc).__name__, exc)
            supervisor.set_connected(False, type(exc).__name__)
            supervisor.wait_backoff(attempt)
            attempt += 1
            continue
        if supervisor is not None:
            supervisor.set_connected(True)
        return result
    return None

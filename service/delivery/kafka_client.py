"""Kafka client settings and topic creation, shared by the event shipper and the analyzer."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..config import KafkaConfig


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


def ensure_topic(cfg: KafkaConfig, timeout_ms: int = 5000) -> None:
    """Create the events topic if it does not exist; raises kafka errors when the broker is unreachable."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, client_id=f"{cfg.client_id}-admin",
                             request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                             **kafka_security_settings(cfg))
    try:
        if cfg.topic in admin.list_topics():
            return
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(cfg.topic, num_partitions=cfg.topic_partitions, replication_factor=1)])
    finally:
        admin.close()

"""The event sink's partitioner (service/delivery/key_partitioner.py): kafka-python's DefaultPartitioner's
choice for every record, checked against it on random keys and partition counts, and on a real broker."""

from __future__ import annotations

import random

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2 as kafka_murmur2

from splitwatch.service.config import KafkaConfig
from splitwatch.service.delivery.kafka_sink import KafkaSink
from splitwatch.service.delivery.key_partitioner import KeyHashPartitioner, murmur2
from tests.harness import Broker, new_topic


class Cluster:
    """The part of kafka-python's ClusterMetadata a partitioner reads."""

    def __init__(self, partitions: dict[str, set[int]], available: dict[str, set[int]] | None = None) -> None:
        self.parts = partitions
        self.available = available or partitions

    def topics(self) -> set[str]:
        return set(self.parts)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.parts[topic]) if topic in self.parts else None

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.available[topic]) if topic in self.available else None


def test_murmur2_is_kafka_pythons() -> None:
    rng = random.Random(11)
    keys = [rng.randbytes(rng.randrange(0, 80)) for _ in range(20_000)]
    keys += [f"user-{i}".encode() for i in range(2000)] + [b"", b"a", b"ab", b"abc", b"abcd", "é".encode()]
    assert [k for k in keys if murmur2(k) != kafka_murmur2(k) & 0xFFFFFFFF] == []
    assert murmur2(b"21") == 3321034988 and murmur2(b"foobar") == 3504634814  # kafka-python's own values


def test_keyed_records_get_the_default_partitioners_choice() -> None:
    rng = random.Random(5)
    ours, theirs = KeyHashPartitioner(), DefaultPartitioner()
    for count in (1, 2, 3, 6, 7, 12, 50):
        ids = set(rng.sample(range(200), count))  # not 0..n-1: the position in the sorted list counts
        cluster = Cluster({"events": ids}, available={"events": set(list(ids)[: max(1, count // 2)])})
        for _ in range(2000):
            key = rng.randbytes(rng.randrange(0, 40))
            assert ours.partition("events", key, key, None, b"v", cluster) == \
                theirs.partition("events", key, key, None, b"v", cluster)
    grown = Cluster({"events": set(range(12))})  # the topic grew: the new partitions count at once
    keys = [b"%d" % i for i in range(500)]
    assert {ours.partition("events", k, k, None, b"v", grown) for k in keys} == set(range(12))


def test_unkeyed_records_and_unknown_topics_as_the_default_partitioner() -> None:
    ours = KeyHashPartitioner()
    cluster = Cluster({"events": {0, 1, 2}}, available={"events": {2}})
    assert {ours.partition("events", None, None, None, b"v", cluster) for _ in range(50)} == {2}
    with pytest.raises(ValueError, match="Topic other not found"):
        ours.partition("other", b"k", b"k", None, b"v", cluster)


def test_events_land_on_the_java_clients_partition_of_their_key(broker: Broker) -> None:
    topic = new_topic()
    cfg = KafkaConfig(bootstrap_servers=broker.bootstrap, topic=topic, topic_partitions=6)
    sink = KafkaSink(cfg)
    keys = [f"unit-{i}".encode() for i in range(300)]
    try:
        sink.send([(k, b'{"n": %d}' % i) for i, k in enumerate(keys)])
    finally:
        sink.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000, auto_offset_reset="earliest")
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(6)])
        got = {m.key: m.partition for m in consumer}
    finally:
        consumer.close()
    assert len(got) == len(keys)
    assert all(got[k] == (kafka_murmur2(k) & 0x7FFFFFFF) % 6 for k in keys)
    assert len(set(got.values())) == 6

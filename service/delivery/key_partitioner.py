"""kafka-python's default partitioning of keyed records, at about half its cost per record.

Every event is keyed by its unit (:meth:`~splitwatch.service.request_events.RequestEvent.key`), so each
record goes through the partitioner: kafka-python's ``DefaultPartitioner`` builds the topic set, the
sorted partition list and the list of available partitions, and hashes the key with a byte-at-a-time
pure-Python murmur2: 9.5 us for a 36-character key (a UUID), 3.7 us for a 9-character one, where
this takes 5.2 and 2.2 us (docs/benchmarks.md, issue 32).
:class:`KeyHashPartitioner` gives every keyed record the same partition (murmur2 as the Java client,
positive, modulo the topic's partition count, over the sorted partitions), reading the key four bytes
at a time; records without a key go to ``DefaultPartitioner`` as before. tests/test_key_partitioner.py
compares the two on random keys and partition counts.

Written here because kafka-python has no faster built-in partitioner with the Java client's hash, and
a C murmur2 package would be one more compiled dependency of every proxy image for a few microseconds.
"""

from __future__ import annotations

import struct
from typing import Any

from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.abc import Partitioner

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Return the 32-bit MurmurHash2 of ``data`` with the Java client's seed (kafka-python's ``murmur2``)."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    for k in struct.unpack_from(f"<{length >> 2}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


class KeyHashPartitioner(Partitioner):
    """``DefaultPartitioner``'s choice for every record: keyed ones computed here, the others by it."""

    def __init__(self) -> None:
        self._default = DefaultPartitioner()
        self._sorted: tuple[frozenset[int], list[int]] = (frozenset(), [])

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: bytes | None, cluster: Any) -> int:
        """Return the record's partition: murmur2 of the key over the topic's sorted partitions."""
        if serialized_key is None:
            return self._default.partition(topic, key, serialized_key, value, serialized_value, cluster)
        partitions = cluster.partitions_for_topic(topic)
        if partitions is None:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        known, ordered = self._sorted
        if partitions != known:  # the topic's partitions changed (or the first record): sort them once
            ordered = sorted(partitions)
            self._sorted = (frozenset(partitions), ordered)
        return ordered[(murmur2(serialized_key) & 0x7FFFFFFF) % len(ordered)]

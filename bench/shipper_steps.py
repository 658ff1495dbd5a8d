"""What each step of the event shipper costs per event, before and after issue 32's third part, in one process.

The shipper (service/delivery/shipper.py) is a process beside each proxy worker: on a small machine its
CPU is taken from the worker's (docs/benchmarks.md, "Issue 32, third part"). Timed here, each with the
code it runs today and the way the commit before this part (fe939b3) did the same work ("before",
written out here or called from the library it used), the two interleaved:

- the prompt's language: py3langid's ``classify`` (a dense product over all 7,480 features) against
  ``classify_language`` (the features the text has);
- the topic sketch: every word pair built as a string and the 128 buckets walked twice, against the
  filled buckets only and pair hashes continued from the word's CRC;
- ``text_features``: a sentence's letter test as a generator over its characters, the number pattern
  tried at every position and the personal-data pattern's ``findall``, against today's;
- the partition of a keyed record: kafka-python's ``DefaultPartitioner`` against ``KeyHashPartitioner``;
- a record through kafka-python to a real broker (Tansu, as the tests run it): ``send`` of 100 keyed
  events then ``flush``, in the shipper's CPU (all its threads: ``time.process_time``), with the
  producer's metrics and the default partitioner (before) and without them and with ours (after).

Prompts: the proxy benchmark's ("Where is my parcel? Order 1234."), 1,000 short chatterbot-corpus
utterances, and 300 mixes of 2,000 characters. Best of 7 interleaved passes, microseconds per prompt or
record (the Kafka row: best of 3 interleaved rounds).

Usage: python bench/shipper_steps.py
"""

from __future__ import annotations

import base64
import math
import os
import platform
import random
import re
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import orjson

from splitwatch.service.features import text as text_module
from splitwatch.service.features.prompt import LANGUAGES, _language_identifier, classify_language, language_sample
from splitwatch.service.features.text import text_features
from splitwatch.service.features.topic_sketch import _WORD, SKETCH_DIMS, STOP_WORDS, topic_sketch
from tests.test_drift import corpus
from tests.test_key_partitioner import Cluster

BENCH_PROMPT = "Where is my parcel? Order 1234."


def sketch_before(text: str) -> str:
    """The topic sketch as fe939b3 computed it (sketch_vector, then encode_sketch)."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]
    buckets: dict[int, float] = {}
    for gram in (*words, *(f"{a} {b}" for a, b in pairwise(words))):
        h = zlib.crc32(gram.encode())
        buckets[h % SKETCH_DIMS] = buckets.get(h % SKETCH_DIMS, 0.0) + (1.0 if h & 0x80000000 else -1.0)
    vec = [0.0] * SKETCH_DIMS
    norm = math.sqrt(sum(v * v for v in buckets.values()))
    if norm:
        for i, v in buckets.items():
            vec[i] = v / norm
    raw = bytearray(len(vec))
    for i, v in enumerate(vec):
        if v:
            raw[i] = max(-127, min(127, round(v * 127))) & 0xFF
    return base64.b64encode(raw).decode()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
_NUMBER_BEFORE = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")


def sentences_before(text: str) -> list[str]:
    """fe939b3's sentences(): a generator over each sentence's characters for its letter test."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if any(c.isalnum() for c in s)]


def pair_us(before: Callable[[str], object], after: Callable[[str], object], items: list, rounds: int = 7,
            ) -> tuple[float, float]:
    """Return the best pass of ``before`` and of ``after`` over ``items`` (microseconds per item), the passes
    interleaved so that a slow moment of the machine falls on both."""
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, fn in enumerate((before, after)):
            t0 = time.perf_counter()
            for item in items:
                fn(item)
            best[i] = min(best[i], (time.perf_counter() - t0) / len(items) * 1e6)
    return best[0], best[1]


def text_features_before(text: str) -> dict[str, float]:
    """text_features with fe939b3's sentences(), number pattern and personal-data count swapped in."""
    saved = text_module.sentences, text_module._NUMBER, text_module.pii_number_count
    text_module.sentences = sentences_before
    text_module._NUMBER = _NUMBER_BEFORE
    text_module.pii_number_count = lambda t: len(text_module._PII_NUMBER.findall(t))
    try:
        return text_features(text)
    finally:
        text_module.sentences, text_module._NUMBER, text_module.pii_number_count = saved


def kafka_us_per_record(bootstrap: str, topic: str, before: bool, records: list[tuple[bytes, bytes]]) -> float:
    """Return the process's CPU (all threads) per record to send ``records`` in batches of 100 and flush."""
    from kafka import KafkaProducer
    from kafka.partitioner import DefaultPartitioner

    from splitwatch.service.delivery.key_partitioner import KeyHashPartitioner

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, retries=0,
                             linger_ms=20, partitioner=DefaultPartitioner() if before else KeyHashPartitioner(),
                             metrics_enabled=before)
    try:
        for k, v in records[:200]:  # warm-up: metadata, connection
            producer.send(topic, key=k, value=v)
        producer.flush()
        t0 = time.process_time()
        for i in range(0, len(records), 100):
            futures = [producer.send(topic, key=k, value=v) for k, v in records[i:i + 100]]
            producer.flush()
            for f in futures:
                f.get(timeout=0)
        return (time.process_time() - t0) / len(records) * 1e6
    finally:
        producer.close()


# Past the size limits on purpose (pyproject.toml: bench/ is exempt): one scenario, read top to bottom.
def main() -> None:
    from kafka.partitioner import DefaultPartitioner

    from splitwatch.service.config import KafkaConfig
    from splitwatch.service.delivery.kafka_client import ensure_topic
    from splitwatch.service.delivery.key_partitioner import KeyHashPartitioner
    from tests.harness import Broker

    rng = random.Random(0)
    texts = corpus("english")
    short = rng.sample(texts, 1000)
    long = [" ".join(rng.choices(texts, k=40))[:2000] for _ in range(300)]
    sets = {"bench prompt": [BENCH_PROMPT] * 1000, "short (corpus)": short, "long (2,000 chars)": long}
    ident = _language_identifier(LANGUAGES)
    rows: list[tuple[str, str, float, float]] = []
    for label, items in sets.items():
        samples = [language_sample(t) for t in items]
        rows.append(("language", label, *pair_us(lambda s: ident.classify(s)[0], classify_language, samples)))
    for label, items in sets.items():
        rows.append(("topic sketch", label, *pair_us(sketch_before, topic_sketch, items)))
    for label, items in sets.items():
        rows.append(("text_features", label, *pair_us(text_features_before, text_features, items)))
    cluster = Cluster({"events": set(range(6))})  # 6 partitions
    keys = {"unit key of 9 characters (wrk-12345)": [b"wrk-%05d" % i for i in range(1000)],
            "unit key of 36 characters (a UUID)": [str(uuid.UUID(int=rng.getrandbits(128))).encode()
                                                    for _ in range(1000)]}
    default, ours = DefaultPartitioner(), KeyHashPartitioner()
    for label, items in keys.items():
        rows.append(("partition", label, *pair_us(lambda k: default.partition("events", k, k, None, b"v", cluster),
                                                  lambda k: ours.partition("events", k, k, None, b"v", cluster),
                                                  items)))
    work = Path(tempfile.mkdtemp(prefix="splitwatch-shipper-steps-"))
    broker = Broker(work)
    broker.start()
    try:
        topic = f"bench-{os.getpid()}"
        ensure_topic(KafkaConfig(bootstrap_servers=broker.bootstrap, topic=topic), 5000, topic=topic, partitions=6)
        event = orjson.dumps({"schema": 3, "event_id": "e" * 36, "type": "exposure", "features": {"chars": 31.0}})
        records = [(b"unit-%d" % i, event) for i in range(10_000)]
        before_runs, after_runs = [], []
        for _ in range(3):  # interleaved rounds
            before_runs.append(kafka_us_per_record(broker.bootstrap, topic, True, records))
            after_runs.append(kafka_us_per_record(broker.bootstrap, topic, False, records))
        rows.append(("kafka-python send + flush, CPU of all threads", "10,000 keyed events in batches of 100",
                     min(before_runs), min(after_runs)))
    finally:
        broker.stop()
    print("| step | input | before (us) | after (us) | after / before |\n|---|---|---|---|---|")
    for step, label, before, after in rows:
        print(f"| {step} | {label} | {before:.2f} | {after:.2f} | {after / before:.2f} |")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")


if __name__ == "__main__":
    main()

"""The event shipper: a child process of each proxy worker that owns its spool and Kafka producer.

It receives batches of serialised events over a pipe from the worker's
:class:`~service.publisher.EventPublisher`, appends them to the on-disk spool
(write-ahead), and ships batches from the spool to Kafka, advancing the spool's
cursor only once Kafka acknowledged them. Running it in its own process keeps
kafka-python's CPU time and GIL hand-offs away from the worker's event loop
(bench/proxy_overhead.py measured the difference).

It ignores SIGINT/SIGTERM: it stops when the worker closes the pipe (or dies),
after delivering what it can within the worker's flush deadline.

Only errors that a retry can cure are retried. When Kafka refuses a batch for a property of a
record (too large, invalid), the shipper sends that batch's records one at a time and sets the
offending one aside in the dead-letter file (:mod:`.dead_letters`), so one record never holds
back the spool. Every other error (broker down, timeouts, authorisation) keeps the events in the
spool and is retried with back-off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import struct
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from .. import metrics
from ..answer_comparison import compare_answers
from ..answer_features import answer_features, stream_content
from ..config import KafkaConfig
from ..events import TEXT_KIND_ANSWER, TEXT_KIND_PAIR, TEXT_KIND_PROMPT, TEXT_KIND_STREAM, split_pair_sample
from ..features import LANGUAGES, shipper_features
from .dead_letters import DeadLetterReason, DeadLetters, dead_letters_for
from .kafka_client import ensure_topic, kafka_security_settings
from .spool import Record, Spool, SpoolLockedError

log = logging.getLogger(__name__)

# Slots of the shared status array (doubles) that the worker reads for /readyz.
CONNECTED, SENT, SPOOL_DROPPED, PENDING_EVENTS, PENDING_BYTES, STATE = range(6)
STATUS_SLOTS = 6
STATE_STARTING, STATE_RUNNING, STATE_LOCKED, STATE_DONE = 0.0, 1.0, -1.0, 2.0
ERROR_BYTES = 128

_FRAME = struct.Struct(">HIH")
MAX_KEY_BYTES = 0xFFFF  # the pipe's and the spool's frames give a key two bytes of length
MAX_VALUE_BYTES = 0xFFFFFFFF
SHIPPER_CPUS_ENV = "SPLITWATCH_SHIPPER_CPUS"
SHIPPER_NICE_ENV = "SPLITWATCH_SHIPPER_NICE"
SHIPPER_NICE = 10
"""The shipper's CPU priority below its worker's (``os.nice``). Its work is batched and waits well;
the worker's relays do not: on a shared core, a shipper at the worker's priority preempted it for
up to 140 ms at a time, and streams' chunks and first tokens waited that long (docs/benchmarks.md,
streams). 0 keeps the worker's priority."""

PipeRecord = tuple[bytes, bytes, bytes]
"""(key, event JSON, text sample) as the worker hands it over: the sample (a kind byte, then the
start of the prompt or the answer) is b"" for events without text."""
MAX_SAMPLE_BYTES = 1 + 4 + 2 * (1 + 16384)  # a shadow pair: two stream samples
"""A text sample's cap on the pipe: 4,000 characters of UTF-8, or the first 16 KB of an SSE answer."""


def frame_error(key: bytes, value: bytes) -> str | None:
    """Return why a record cannot be framed for the pipe and the spool, or None when it can."""
    if len(key) > MAX_KEY_BYTES:
        return f"key of {len(key)} bytes; a key must fit in {MAX_KEY_BYTES} bytes"
    if len(value) > MAX_VALUE_BYTES:
        return f"value of {len(value)} bytes"
    return None


def record_error_reason(exc: BaseException) -> DeadLetterReason | None:
    """Return the dead-letter reason when ``exc`` is a property of the records sent, None when retriable.

    Kafka refuses a record for its size or its content: no retry can cure that. Anything else (the
    broker unreachable, timeouts, authorisation, leadership changes) is not the record's fault: the
    events stay in the spool and the send is retried.
    """
    from kafka import errors

    if isinstance(exc, SinkUnavailable):
        return None
    if isinstance(exc, errors.MessageSizeTooLargeError | errors.RecordListTooLargeError):
        return "too_large"
    if isinstance(exc, errors.InvalidRecordError | errors.CorruptRecordError
                  | errors.UnsupportedForMessageFormatError):
        return "rejected"
    if isinstance(exc, TypeError | ValueError | struct.error) and not isinstance(exc, errors.KafkaError):
        return "unserialisable"  # raised while the producer serialised or framed a record
    return None


def encode_batch(records: list[PipeRecord]) -> bytes:
    """Return records framed for the pipe: >H key length, >I value length, >H sample length, then the bytes."""
    return b"".join(_FRAME.pack(len(k), len(v), len(s)) + k + v + s for k, v, s in records)


def decode_batch(blob: bytes) -> list[PipeRecord]:
    """Return the records of a blob made by :func:`encode_batch`."""
    out = []
    offset = 0
    while offset < len(blob):
        klen, vlen, slen = _FRAME.unpack_from(blob, offset)
        offset += _FRAME.size
        k, v = blob[offset:offset + klen], blob[offset + klen:offset + klen + vlen]
        out.append((k, v, blob[offset + klen + vlen:offset + klen + vlen + slen]))
        offset += klen + vlen + slen
    return out


def with_text_features(value: bytes, sample: bytes, languages: tuple[str, ...] = LANGUAGES) -> bytes:
    """Return the event JSON with the features of its text sample added; the sample itself is dropped.

    A prompt sample adds the shipper's prompt features to ``features`` (language, topic, code, ...);
    an answer sample sets ``answer`` (refusal, empty, truncated, chars); a shadow pair's sample sets
    ``scores`` (:func:`pair_scores`).
    """
    kind, body = sample[:1], sample[1:]
    event = orjson.loads(value)
    if kind == TEXT_KIND_PROMPT:
        event.setdefault("features", {}).update(shipper_features(body.decode(errors="replace"), languages))
    elif kind in (TEXT_KIND_ANSWER, TEXT_KIND_STREAM):
        event["answer"] = answer_features(event, body if kind == TEXT_KIND_STREAM else body.decode(errors="replace"))
    elif kind == TEXT_KIND_PAIR:
        event["scores"] = pair_scores(event, *split_pair_sample(body))
    else:
        return value
    return orjson.dumps(event)


def _sample_text(sample: bytes) -> str:
    kind, body = sample[:1], sample[1:]
    return stream_content(body)[0] if kind == TEXT_KIND_STREAM else body.decode("utf-8", "replace")


def pair_scores(event: dict[str, Any], control: bytes, candidate: bytes) -> dict[str, float] | None:
    """Return a shadow pair's comparison scores (:func:`..answer_comparison.compare_answers`), or None
    when either call failed (there is no pair of answers to compare)."""
    c, s = event["control"], event["shadow"]
    if c.get("error") or s.get("error") or not control or not candidate:
        return None
    return compare_answers(_sample_text(control), _sample_text(candidate), bool(event.get("json_requested")),
                           c.get("finish_reason"), s.get("finish_reason"))


class SinkUnavailable(Exception):
    """The sink could not connect to Kafka; ``cause`` is the error it got."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class KafkaSink:
    """Sends batches of records to a topic with a kafka-python producer, rebuilt after any failure.

    The events topic by default; ``topic`` (created with ``partitions`` and ``topic_configs`` if
    missing) for another one, such as the control topic.
    """

    def __init__(self, cfg: KafkaConfig, topic: str | None = None, partitions: int | None = None,
                 topic_configs: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.topic = topic or cfg.topic
        self._partitions = partitions
        self._topic_configs = topic_configs
        self._producer: Any = None

    def _connect(self) -> Any:
        from kafka import KafkaProducer

        # A restarted broker may have lost the topic; auto-creation under concurrent produce was seen
        # to lose acknowledged writes, so the topic is created explicitly before producing.
        ensure_topic(self.cfg, timeout_ms=min(self.cfg.request_timeout_ms, 5000), topic=self.topic,
                     partitions=self._partitions, topic_configs=self._topic_configs)
        # Idempotence is off: a broker restart loses the producer id and an idempotent producer then
        # fails every send until rebuilt. Ordering comes from sending one batch at a time; duplicates
        # from resending a failed batch are removed by event_id downstream.
        return KafkaProducer(
            bootstrap_servers=self.cfg.bootstrap_servers, client_id=self.cfg.client_id, acks="all",
            enable_idempotence=False, retries=0, linger_ms=self.cfg.linger_ms,
            request_timeout_ms=self.cfg.request_timeout_ms, max_block_ms=self.cfg.request_timeout_ms,
            bootstrap_timeout_ms=min(self.cfg.request_timeout_ms, 5000),
            reconnect_backoff_ms=50, reconnect_backoff_max_ms=self.cfg.reconnect_backoff_max_ms,
            # room for one event of kafka.max_event_bytes plus the request's overhead
            max_request_size=max(1_048_576, self.cfg.max_event_bytes + 65_536),
            **kafka_security_settings(self.cfg))

    def send(self, records: list[Record]) -> None:
        """Send records and wait for every acknowledgement; raises on any failure.

        A failure to connect is raised as :class:`SinkUnavailable`, so that it is never mistaken for
        a property of the records.
        """
        if self._producer is None:
            try:
                self._producer = self._connect()
            except Exception as exc:
                raise SinkUnavailable(exc) from exc
        try:
            futures = [self._producer.send(self.topic, key=k, value=v) for k, v in records]
            self._producer.flush(timeout=self.cfg.request_timeout_ms / 1000)
            for f in futures:
                f.get(timeout=0)  # raises the send's error, or KafkaTimeoutError if not acknowledged
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Close the producer, if any, without waiting for unsent records (they are still in the spool)."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=0)
            self._producer = None


class EventOutbox:
    """Events a background process publishes (drift verdicts, rollout changes), kept until Kafka takes them.

    Not the proxy's spool: these are few, and a process that cannot reach Kafka keeps them in memory
    and tries again at its next :meth:`flush`.
    """

    def __init__(self, sink: KafkaSink, what: str) -> None:
        self.sink = sink
        self.what = what  # "drift events", "control events": for the log line
        self.pending: list[Any] = []

    def append(self, event: Any) -> None:
        """Keep an event (anything with ``key()`` and ``to_json()``) for the next flush."""
        self.pending.append(event)

    def flush(self) -> None:
        """Send the pending events; keep them for the next try if Kafka fails."""
        if not self.pending:
            return
        try:
            self.sink.send([(e.key(), e.to_json()) for e in self.pending])
            self.pending.clear()
        except Exception as exc:  # the events wait for the next flush
            log.warning("could not publish %d %s (%s); retrying", len(self.pending), self.what, exc)


class Shipper:
    """Pipe reader thread + Kafka shipping loop around one spool; see the module docstring."""

    def __init__(self, cfg: KafkaConfig, spool: Spool, conn: Connection | None, status: Any, error: Any,
                 flush_s: float, sink: Any = None, report: bool = True,
                 languages: tuple[str, ...] = LANGUAGES, dead_letters: DeadLetters | None = None) -> None:
        self.cfg = cfg
        self.dead_letters = dead_letters or dead_letters_for(spool.dir, cfg.spool.dead_letter_max_bytes)
        self._isolate = 0  # records still to send one at a time after a batch was refused for a record
        self.languages = languages
        self.spool = spool
        self.conn = conn
        self.status = status
        self.error = error
        self.flush_s = flush_s
        self.sink = sink or KafkaSink(cfg)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._eof = threading.Event()
        self._next_attempt = 0.0
        self._backoff = cfg.reconnect_backoff_ms / 1000
        self.connected = False
        self.last_error: str | None = None
        self.report = report  # False for an adopted spool: the gauges describe this worker's own spool

    # -- receiving --------------------------------------------------------------------------------
    def append(self, records: list[Record]) -> None:
        """Append records to the spool and count what a full spool dropped.

        The worker sets aside what cannot be framed (:func:`frame_error`) before handing it over.
        """
        with self._lock:
            dropped = self.spool.append(records) if records else 0
            dropped += self.spool.take_dropped_oldest()
            self.spool.tick()
        if dropped:
            self.status[SPOOL_DROPPED] += dropped
            metrics.EVENTS_DROPPED.labels("spool_full").inc(dropped)
        self._publish_state()
        self._wake.set()

    def _read_pipe(self) -> None:
        assert self.conn is not None
        try:
            while True:
                blob = self.conn.recv_bytes()
                if not blob:  # the worker's close marker
                    break
                self.append([(k, self._enrich(v, s)) for k, v, s in decode_batch(blob)])
        except (EOFError, OSError):
            log.warning("event pipe closed without a close marker (the worker died?); flushing the spool")
        finally:
            self._eof.set()
            self._wake.set()

    def _enrich(self, value: bytes, sample: bytes) -> bytes:
        """Return the event with the features of its text, or unchanged when it has no sample (or is not JSON)."""
        if not sample:
            return value
        try:
            return with_text_features(value, sample, self.languages)
        except Exception as exc:  # sent without those features rather than not at all
            log.warning("could not add text features to an event (%s: %s)", type(exc).__name__, exc)
            return value

    # -- shipping ---------------------------------------------------------------------------------
    def ship_once(self) -> bool:
        """Send one batch from the spool; return True when it was acknowledged or set aside (or there was nothing).

        After a batch was refused for one of its records, the next records go one at a time, so
        that only the offending record is set aside.
        """
        with self._lock:
            records, pos = self.spool.read(1 if self._isolate else self.cfg.batch_max_events)
        if not records:
            self._isolate = 0
            return True
        t0 = time.perf_counter()
        try:
            self.sink.send(records)
        except Exception as exc:
            reason = record_error_reason(exc)
            if reason is not None and len(records) > 1:
                log.warning("Kafka refused a batch of %d events (%s); sending them one at a time",
                            len(records), type(exc).__name__)
                self._isolate = len(records)
                return True  # not a connection problem: go on at once, one record at a time
            if reason is not None:
                (key, value), = records
                self.dead_letters.add(reason, key, value, f"{type(exc).__name__}: {exc}")
                self._acknowledged(pos, 1, t0, count_sent=False)
                return True
            name = type(exc.cause if isinstance(exc, SinkUnavailable) else exc).__name__
            metrics.EVENT_SEND_ERRORS.labels(name).inc()
            if self.connected or self.last_error != name:
                log.warning("Kafka unreachable (%s: %s); events are spooled to %s", name, exc, self.spool.dir)
            self._set_error(name)
            self._set_connected(False)
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.cfg.reconnect_backoff_max_ms / 1000)
            return False
        self._acknowledged(pos, len(records), t0)
        return True

    def _acknowledged(self, pos: Any, n: int, t0: float, count_sent: bool = True) -> None:
        """Advance the spool past ``n`` records that Kafka acknowledged (or that were set aside)."""
        metrics.EVENT_SEND_SECONDS.observe(time.perf_counter() - t0)
        with self._lock:
            self.spool.commit(pos, n)
        self._isolate = max(0, self._isolate - n)
        if count_sent:
            self.status[SENT] += n
            metrics.EVENTS_SENT.inc(n)
        if not self.connected:
            log.info("Kafka reachable at %s; delivering spooled events", self.cfg.bootstrap_servers)
        self._set_connected(True)
        self._backoff = self.cfg.reconnect_backoff_ms / 1000
        self._publish_state()

    def run(self) -> None:
        """Ship until the pipe closes, then deliver what remains within ``flush_s``; then close the spool."""
        reader = threading.Thread(target=self._read_pipe, name="splitwatch-pipe-reader", daemon=True)
        if self.conn is not None:
            reader.start()
        else:
            self._eof.set()
        try:
            while not self._eof.is_set():
                pending = self.spool.pending_events
                wait = max(0.001, self._next_attempt - time.monotonic()) if pending else 1.0
                self._wake.wait(timeout=wait)
                self._wake.clear()
                while self.spool.pending_events and time.monotonic() >= self._next_attempt and not self._eof.is_set():
                    if not self.ship_once():
                        break
            if self.conn is not None:
                reader.join(5)
            deadline = time.monotonic() + self.flush_s
            while self.spool.pending_events and time.monotonic() < deadline:
                if not self.ship_once():
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            if self.spool.pending_events:
                log.warning("stopping with %d events in the spool %s; they are sent at the next start",
                            self.spool.pending_events, self.spool.dir)
        finally:
            self._publish_state()
            self.sink.close()
            self.spool.close()

    # -- state ------------------------------------------------------------------------------------
    def _set_connected(self, value: bool) -> None:
        self.connected = value
        self.status[CONNECTED] = 1.0 if value else 0.0
        if self.report:
            metrics.KAFKA_CONNECTED.labels(self.spool.dir.name).set(1 if value else 0)

    def _set_error(self, name: str) -> None:
        self.last_error = name
        self.error.value = name.encode()[: ERROR_BYTES - 1]

    def _publish_state(self) -> None:
        self.status[PENDING_EVENTS] = self.spool.pending_events
        self.status[PENDING_BYTES] = self.spool.pending_bytes
        if self.report:
            metrics.EVENTS_SPOOLED.set(self.spool.pending_events)
            metrics.SPOOL_BYTES.set(self.spool.pending_bytes)

    def drain(self, stop: threading.Event) -> None:
        """Ship until the spool is empty (retrying with back-off) or ``stop`` is set; then close it."""
        try:
            while self.spool.pending_events and not stop.is_set():
                if not self.ship_once():
                    stop.wait(max(0.0, self._next_attempt - time.monotonic()))
        finally:
            self.sink.close()
            self.spool.close()


META_FILE = "splitwatch-spool.json"


def _destination(cfg: KafkaConfig) -> dict[str, str]:
    return {"bootstrap_servers": cfg.bootstrap_servers, "topic": cfg.topic}


def adopt_orphans(cfg: KafkaConfig, own: Path, workers: int, stop: threading.Event) -> None:
    """Deliver spools ``worker-N`` (N >= workers) that no process owns, e.g. after fewer workers.

    Only spools written for the same Kafka destination are adopted: a shared spool directory must
    never send one proxy's events to another proxy's topic.
    """
    for path in sorted(own.parent.glob("worker-*")):
        suffix = path.name.removeprefix("worker-")
        if path == own or not suffix.isdigit() or int(suffix) < workers or stop.is_set():
            continue
        try:
            meta = json.loads((path / META_FILE).read_text())
        except (OSError, ValueError):
            meta = None
        if meta != _destination(cfg):
            log.warning("spool %s left by another run is for %s, not this proxy's Kafka; leaving it", path, meta)
            continue
        try:
            spool = Spool(path, max_bytes=cfg.spool.max_bytes, segment_bytes=cfg.spool.segment_bytes,
                          fsync=cfg.spool.fsync, fsync_interval_ms=cfg.spool.fsync_interval_ms,
                          full_policy=cfg.spool.full_policy)
        except SpoolLockedError:
            continue  # a live process owns it
        if spool.pending_events:
            log.info("adopting %d undelivered events from spool %s", spool.pending_events, path)
        Shipper(cfg, spool, None, [0.0] * STATUS_SLOTS, SimpleNamespace(value=b""), 0.0, report=False).drain(stop)


def shipper_main(cfg_json: str, spool_dir: str, conn: Connection, status: Any, error: Any, flush_s: float,
                 adopt_workers: int | None = None, languages: tuple[str, ...] = LANGUAGES) -> None:
    """Entry point of the shipper process (multiprocessing target).

    With ``adopt_workers`` (worker 0 does this) it also delivers orphaned spools of higher workers.
    """
    from ..logs import configure_logging

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # it stops when the worker's pipe closes
        signal.signal(sig, signal.SIG_IGN)
    cpus = os.environ.get(SHIPPER_CPUS_ENV)
    if cpus:  # keep the shipper off the workers' cores (e.g. "3" or "2,3")
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    nice = int(os.environ.get(SHIPPER_NICE_ENV, SHIPPER_NICE))
    if nice > 0:
        os.nice(nice)
    configure_logging()
    cfg = KafkaConfig.model_validate_json(cfg_json)
    try:
        spool = Spool(spool_dir, max_bytes=cfg.spool.max_bytes, segment_bytes=cfg.spool.segment_bytes,
                      fsync=cfg.spool.fsync, fsync_interval_ms=cfg.spool.fsync_interval_ms,
                      full_policy=cfg.spool.full_policy)
    except SpoolLockedError:
        status[STATE] = STATE_LOCKED
        return
    (Path(spool_dir) / META_FILE).write_text(json.dumps(_destination(cfg)))
    shipper = Shipper(cfg, spool, conn, status, error, flush_s, languages=tuple(languages))
    shipper._set_connected(False)
    shipper._publish_state()
    status[STATE] = STATE_RUNNING
    stop_adopting = threading.Event()
    if adopt_workers is not None:
        threading.Thread(target=adopt_orphans, args=(cfg, Path(spool_dir), adopt_workers, stop_adopting),
                         name="splitwatch-spool-adopter", daemon=True).start()
    try:
        shipper.run()
    finally:
        stop_adopting.set()
        status[STATE] = STATE_DONE
        metrics.forget_this_process()

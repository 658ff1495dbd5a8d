"""Events that can never be sent, set aside in a file beside the spool instead of stopping delivery.

An event is dead-lettered when no retry can deliver it: it is larger than the broker accepts, it
cannot be serialised or framed, or the broker rejects it as invalid. Errors that are not properties
of the record (broker down, timeouts, authorisation) are never dead-lettered: they keep the event in
the spool and are retried. Each dead letter is one JSON line in ``<spool.dir>/dead-letters/<name>.jsonl``::

    {"ts": "...", "reason": "too_large", "error": "MessageSizeTooLargeError: ...",
     "key": "<unit id, utf-8>", "value": "<the event's JSON>", "value_bytes": 1234567}

``value`` is the event exactly as it would have been sent (``value_b64`` instead when it is not
UTF-8), so a fixed event can be replayed. Lines are appended with one ``write`` on an ``O_APPEND``
descriptor, so a proxy worker and its shipper process can share a file. The file is bounded
(``kafka.spool.dead_letter_max_bytes``): what it cannot hold is counted as dropped, never lost
silently.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson

from .. import metrics

log = logging.getLogger(__name__)

DeadLetterReason = Literal["too_large", "unserialisable", "rejected", "undelivered_at_shutdown"]
DEAD_LETTER_DIR = "dead-letters"


class DeadLetters:
    """An append-only, bounded JSON-lines file of events set aside; thread-safe within a process."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._counted = (0, 0)  # (bytes read, lines in them): count() reads only what was appended since

    def add(self, reason: DeadLetterReason, key: bytes, value: bytes, error: str) -> bool:
        """Append one dead letter and count it; return False (counted as dropped) when the file is full."""
        line: dict[str, object] = {
            "ts": datetime.now(UTC).isoformat(), "reason": reason, "error": error[:1000],
            "key": key[:4096].decode("utf-8", "replace"), "value_bytes": len(value)}
        try:
            line["value"] = value.decode("utf-8")
        except UnicodeDecodeError:
            line["value_b64"] = base64.b64encode(value).decode()
        data = orjson.dumps(line) + b"\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                size = self.path.stat().st_size if self.path.exists() else 0
                if size + len(data) > self.max_bytes:
                    metrics.EVENTS_DROPPED.labels("dead_letter_full").inc()
                    log.error("dead-letter file %s is full (%d bytes); an event (%s) is dropped",
                              self.path, self.max_bytes, reason)
                    return False
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, data)  # one write on O_APPEND: lines of two processes never interleave
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                metrics.EVENTS_DROPPED.labels("dead_letter_unwritable").inc()
                log.error("cannot write dead letter to %s (%s); an event (%s) is dropped", self.path, exc, reason)
                return False
        metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()
        log.error("event set aside in %s (%s: %s)", self.path, reason, error[:200])
        return True

    def count(self) -> int:
        """Return the number of dead letters in the file (0 when there is none).

        Cheap enough for every /readyz probe: only the bytes appended since the last call are read
        (the file only grows; another process may append to it).
        """
        with self._lock:
            offset, lines = self._counted
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                return 0
            whole = chunk[: chunk.rfind(b"\n") + 1]  # a line being written counts once it is complete
            self._counted = (offset + len(whole), lines + whole.count(b"\n"))
            return self._counted[1]


def dead_letters_for(spool_dir: str | Path, max_bytes: int) -> DeadLetters:
    """Return the dead-letter file of one spool: ``<spool.dir>/dead-letters/<spool name>.jsonl``."""
    spool = Path(spool_dir)
    return DeadLetters(spool.parent / DEAD_LETTER_DIR / f"{spool.name}.jsonl", max_bytes)

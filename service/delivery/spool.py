"""A bounded, crash-safe, append-only on-disk log of events waiting for Kafka.

Every event passes through the spool (write-ahead), so the same path serves a
healthy broker and an outage: the sender appends, ships records from the read
cursor, and advances the cursor once Kafka acknowledges them.

Layout of a spool directory::

    LOCK                       flock held by the one process that owns it
    cursor                     "<segment seq> <byte offset>" of the first unacknowledged record
    00000000000000000001.seg   records: >I length, >I crc32(payload), payload
                               payload: >H key length, key, value

A torn record at the tail of the last segment (a crash mid-write) is cut off at
start-up; a corrupt record anywhere else is skipped and counted. Only one thread
(the publisher's sender) may call a Spool's methods.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..files import DirectoryLockedError, fsync_dir, lock_directory, unlock_directory

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
_KEYLEN = struct.Struct(">H")
_SUFFIX = ".seg"

Record = tuple[bytes, bytes]
"""(key, value) of one Kafka message."""


class SpoolLockedError(RuntimeError):
    """Another process owns this spool directory."""


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int = 0
    records: int = 0


@dataclass(frozen=True)
class Position:
    """A read position: segment sequence number and byte offset in it."""

    seq: int
    offset: int


class Spool:
    """The on-disk event log of one process; see the module docstring."""

    def __init__(self, directory: str | Path, *, max_bytes: int, segment_bytes: int,
                 fsync: Literal["always", "interval", "never"] = "interval", fsync_interval_ms: int = 200,
                 full_policy: Literal["drop_oldest", "drop_newest"] = "drop_newest") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_policy = fsync
        self.fsync_interval_s = fsync_interval_ms / 1000
        self.full_policy = full_policy
        self.corrupt_records = 0
        self._dropped_oldest = 0
        try:
            self._lock_fd = lock_directory(self.dir)
        except DirectoryLockedError:
            raise SpoolLockedError(f"spool directory {self.dir} is in use by another process") from None
        self._segments: list[_Segment] = []
        self._cursor = Position(0, 0)
        self._consumed_records = 0  # records of the first segment before the cursor
        self._writer: int | None = None
        self._last_fsync = time.monotonic()
        self._last_cursor_write = 0.0
        self._dirty = False
        self._load()

    # -- start-up -----------------------------------------------------------------------------------
    def _load(self) -> None:
        seqs = sorted(int(p.stem) for p in self.dir.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        for seq in seqs:
            seg = _Segment(seq, self._path(seq))
            seg.size, seg.records = self._scan(seg.path, truncate=(seq == seqs[-1]))
            self._segments.append(seg)
        cursor = self._read_cursor()
        # Segments wholly before the cursor were acknowledged; a crash came before their deletion.
        while self._segments and cursor is not None and self._segments[0].seq < cursor.seq:
            self._delete_first()
        if self._segments and cursor is not None and cursor.seq == self._segments[0].seq \
                and cursor.offset <= self._segments[0].size:
            self._cursor = cursor
            self._consumed_records = self._count_records(self._segments[0].path, cursor.offset)
        elif self._segments:
            self._cursor = Position(self._segments[0].seq, 0)
        if not self._segments or self._segments[-1].size >= self.segment_bytes:
            last = self._segments[-1].seq if self._segments else (cursor.seq if cursor else 0)
            self._segments.append(_Segment(last + 1, self._path(last + 1)))
            if len(self._segments) == 1:
                self._cursor = Position(last + 1, 0)
        self._writer = os.open(self._segments[-1].path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.pending_events:
            log.info("spool %s: %d events (%d bytes) waiting from a previous run", self.dir,
                     self.pending_events, self.pending_bytes)

    @staticmethod
    def _whole_records(data: bytes) -> tuple[int, int]:
        """Return (bytes, count) of the whole records at the start of ``data`` (a torn one is left out)."""
        offset = records = 0
        while offset + _HEADER.size <= len(data):
            length, _crc = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if end > len(data):
                break
            offset = end
            records += 1
        return offset, records

    def _scan(self, path: Path, truncate: bool) -> tuple[int, int]:
        """Return (valid size, record count) of a segment; cut a torn tail when ``truncate``."""
        data = path.read_bytes()
        offset, records = self._whole_records(data)
        if offset != len(data):
            if truncate:
                log.warning("spool %s: cutting a torn record at byte %d (crash during a write)", path, offset)
                with open(path, "r+b") as f:
                    f.truncate(offset)
            else:
                log.error("spool %s: %d trailing bytes are not a whole record", path, len(data) - offset)
        return offset, records

    def _count_records(self, path: Path, upto: int) -> int:
        return self._whole_records(path.read_bytes()[:upto])[1]

    def _read_cursor(self) -> Position | None:
        try:
            seq, offset = (self.dir / "cursor").read_text().split()
            return Position(int(seq), int(offset))
        except (OSError, ValueError):
            return None

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:020d}{_SUFFIX}"

    # -- accounting ---------------------------------------------------------------------------------
    @property
    def pending_events(self) -> int:
        """Return the number of records not yet acknowledged by Kafka."""
        return sum(s.records for s in self._segments) - self._consumed_records

    @property
    def pending_bytes(self) -> int:
        """Return the bytes of records not yet acknowledged by Kafka."""
        return sum(s.size for s in self._segments) - self._cursor.offset

    # -- writing ------------------------------------------------------------------------------------
    def append(self, records: list[Record]) -> int:
        """Append records in order; return how many were dropped because the spool is full."""
        dropped = 0
        buf = bytearray()
        seg = self._segments[-1]
        for key, value in records:
            payload = _KEYLEN.pack(len(key)) + key + value
            rec = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
            while self.pending_bytes + len(buf) + len(rec) > self.max_bytes:
                if self.full_policy == "drop_oldest" and self._drop_oldest_segment():
                    continue
                break
            if self.pending_bytes + len(buf) + len(rec) > self.max_bytes:
                dropped += 1
                continue
            if seg.size + len(buf) >= self.segment_bytes and (seg.size or buf):
                self._write(seg, buf)
                buf = bytearray()
                seg = self._roll()
            buf += rec
            seg.records += 1
        self._write(seg, buf)
        self._maybe_fsync()
        return dropped

    def _write(self, seg: _Segment, buf: bytearray) -> None:
        if not buf:
            return
        assert self._writer is not None
        view = memoryview(buf)
        while view:
            n = os.write(self._writer, view)
            view = view[n:]
        seg.size += len(buf)
        self._dirty = True

    def _roll(self) -> _Segment:
        assert self._writer is not None
        if self.fsync_policy != "never":
            os.fsync(self._writer)
        os.close(self._writer)
        seg = _Segment(self._segments[-1].seq + 1, self._path(self._segments[-1].seq + 1))
        self._segments.append(seg)
        self._writer = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fsync_dir()
        return seg

    def _drop_oldest_segment(self) -> bool:
        """Delete the oldest segment that is not being written; return False when there is none."""
        if len(self._segments) < 2:
            return False
        lost = self._segments[0].records - self._consumed_records
        self._delete_first()
        self._cursor = Position(self._segments[0].seq, 0)
        self._consumed_records = 0
        self._write_cursor()
        self._dropped_oldest += lost
        return True

    def _delete_first(self) -> None:
        seg = self._segments.pop(0)
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()

    def take_dropped_oldest(self) -> int:
        """Return (and reset) the number of records lost by the drop_oldest policy since the last call."""
        n, self._dropped_oldest = self._dropped_oldest, 0
        return n

    def _maybe_fsync(self, force: bool = False) -> None:
        if not self._dirty or self._writer is None:
            return
        now = time.monotonic()
        if force or self.fsync_policy == "always" or (
                self.fsync_policy == "interval" and now - self._last_fsync >= self.fsync_interval_s):
            os.fsync(self._writer)
            self._last_fsync = now
            self._dirty = False

    def tick(self) -> None:
        """Run the interval fsync if it is due; the sender calls this on every loop."""
        self._maybe_fsync()

    def _fsync_dir(self) -> None:
        if self.fsync_policy != "never":
            fsync_dir(self.dir)

    # -- reading ------------------------------------------------------------------------------------
    def read(self, max_records: int) -> tuple[list[Record], Position]:
        """Return up to ``max_records`` records from the cursor (one segment at most) and the end position."""
        out: list[Record] = []
        for seg in self._segments:
            start = self._cursor.offset if seg.seq == self._cursor.seq else 0
            if seg.seq < self._cursor.seq or start >= seg.size:
                continue
            with open(seg.path, "rb") as f:
                f.seek(start)
                data = f.read(seg.size - start)
            offset = 0
            while offset + _HEADER.size <= len(data) and len(out) < max_records:
                length, crc = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size: offset + _HEADER.size + length]
                offset += _HEADER.size + length
                if len(payload) != length or zlib.crc32(payload) != crc:
                    self.corrupt_records += 1
                    log.error("spool %s: skipping a corrupt record before byte %d", seg.path, start + offset)
                    continue
                (klen,) = _KEYLEN.unpack_from(payload, 0)
                out.append((payload[2:2 + klen], payload[2 + klen:]))
            return out, Position(seg.seq, start + offset)
        return out, self._cursor

    def commit(self, pos: Position, records: int) -> None:
        """Mark everything before ``pos`` as acknowledged; ``records`` is how many :meth:`read` returned."""
        if pos.seq < self._cursor.seq:
            return  # drop_oldest deleted that segment while the batch was in flight
        if pos.seq == self._cursor.seq:
            self._consumed_records += records
        else:
            while self._segments[0].seq < pos.seq:
                self._delete_first()
            self._consumed_records = records
        self._cursor = pos
        self._maybe_write_cursor()

    def _maybe_write_cursor(self) -> None:
        """Persist the cursor: at every commit with fsync "always", else at most once per fsync interval.

        A cursor older than the last acknowledgement only makes the next start replay events that
        Kafka already has: duplicates, which consumers drop by event_id, never a loss.
        """
        now = time.monotonic()
        if self.fsync_policy == "always" or now - self._last_cursor_write >= self.fsync_interval_s:
            self._write_cursor()
            self._last_cursor_write = now

    def _write_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        with open(tmp, "w") as f:
            f.write(f"{self._cursor.seq} {self._cursor.offset}\n")
            if self.fsync_policy == "always":
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / "cursor")

    def close(self) -> None:
        """Flush to disk and release the directory lock."""
        if self._writer is not None:
            if self.fsync_policy != "never":
                os.fsync(self._writer)
            os.close(self._writer)
            self._writer = None
        self._write_cursor()
        unlock_directory(self._lock_fd)

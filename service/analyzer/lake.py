"""The Parquet lake: events from Kafka, partitioned by date and experiment, written exactly once.

Layout under ``analyzer.lake_dir``::

    date=2026-11-27/experiment=support-ft/p3-00000000000000001200-00000000000000001899.parquet
    _commits/p3-00000000000000001200-00000000000000001899.json   files of that batch
    _invalid/p3-....jsonl                                        messages that are not valid events

A batch of one Kafka partition becomes one file per (date, experiment), named by the partition
and the batch's offset range, then a commit marker listing them. The marker is the commit: at
start-up, files without a marker (a crash in mid-batch) are deleted, and the next offset of
each partition is read from the markers, so the lake never holds an offset twice whatever Kafka's
committed offsets say. Queries still deduplicate by ``event_id``: the proxy delivers at least once.
Prompt and completion text never enter the lake.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from ..events import parse_event
from ..files import DirectoryLockedError, fsync_dir, lock_directory, unlock_directory

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("event_id", pa.string()), ("type", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
    ("experiment", pa.string()), ("phase", pa.int32()), ("arm", pa.string()), ("unit_id", pa.string()),
    ("request_id", pa.string()),
    ("requested_model", pa.string()), ("upstream_model", pa.string()), ("forced", pa.bool_()),
    ("features", pa.string()),
    ("status_code", pa.int32()), ("latency_ms", pa.float64()), ("ttft_ms", pa.float64()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("error", pa.string()), ("stream", pa.bool_()),
    ("metric", pa.string()), ("value", pa.float64()),
    ("detector", pa.string()), ("detected", pa.bool_()), ("drifted_features", pa.string()),
    ("window_size", pa.int64()),
    ("action", pa.string()), ("status", pa.string()), ("coverage", pa.float64()), ("actor", pa.string()),
    ("changed_by", pa.string()), ("reason", pa.string()), ("revision", pa.int64()), ("evidence", pa.string()),
    ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
    ("finish_reason", pa.string()), ("answer", pa.string()), ("changes", pa.string()),
    # shadow events: the control's call in the response columns above, the candidate's here
    ("candidate", pa.string()), ("scores", pa.string()), ("json_requested", pa.bool_()),
    ("shadow_status_code", pa.int32()), ("shadow_latency_ms", pa.float64()), ("shadow_ttft_ms", pa.float64()),
    ("shadow_prompt_tokens", pa.int64()), ("shadow_completion_tokens", pa.int64()), ("shadow_error", pa.string()),
    ("shadow_finish_reason", pa.string()),
])
SHADOW_SIDE_FIELDS = ("status_code", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "error",
                      "finish_reason")
_FIELDS = [f.name for f in SCHEMA]


UNATTACHED = "_unattached"
"""The partition of outcomes posted without an experiment (experiment keys cannot start with '_')."""


@dataclass(frozen=True)
class Record:
    """One Kafka message: where it came from and its raw value."""

    partition: int
    offset: int
    value: bytes


def _row(rec: Record) -> dict[str, Any] | None:
    """Return the lake row of a message, or None if it is not a valid event."""
    try:
        ev = parse_event(rec.value)
    except (ValidationError, ValueError):
        return None
    d = ev.model_dump()
    if d["type"] == "shadow":
        for k in SHADOW_SIDE_FIELDS:
            d[k], d[f"shadow_{k}"] = d["control"][k], d["shadow"][k]
    row = {k: d.get(k) for k in _FIELDS}
    row["ts"] = ev.ts.astimezone(UTC)
    for col in ("features", "drifted_features", "evidence", "answer", "changes", "scores"):
        if row.get(col) is not None:
            row[col] = orjson.dumps(row[col]).decode()
    row["kafka_partition"], row["kafka_offset"] = rec.partition, rec.offset
    return row


def _name(partition: int, first: int, last: int) -> str:
    return f"p{partition}-{first:020d}-{last:020d}"


class LakeLockedError(RuntimeError):
    """Another process is writing to this lake."""


class Lake:
    """Writes batches atomically and recovers the next offset of each Kafka partition.

    One writer per lake (``writer=True`` takes a lock); readers (the report) need no lock.
    """

    def __init__(self, root: str | Path, writer: bool = False) -> None:
        self.root = Path(root)
        self.commits = self.root / "_commits"
        self.commits.mkdir(parents=True, exist_ok=True)
        (self.root / "_invalid").mkdir(exist_ok=True)
        self._lock_fd: int | None = None
        if writer:
            try:
                self._lock_fd = lock_directory(self.root)
            except DirectoryLockedError:
                raise LakeLockedError(f"another analyzer is writing to the lake {self.root}") from None

    def close(self) -> None:
        """Release the writer's lock."""
        if self._lock_fd is not None:
            unlock_directory(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> dict[int, int]:
        """Delete files of uncommitted batches; return the next offset to read per Kafka partition."""
        committed: set[str] = set()
        next_offset: dict[int, int] = {}
        for marker in self.commits.glob("*.json"):
            data = json.loads(marker.read_text())
            committed.update(data["files"])
            p, last = data["partition"], data["last"]
            next_offset[p] = max(next_offset.get(p, 0), last + 1)
        for f in self.root.glob("date=*/experiment=*/*.parquet"):
            if str(f.relative_to(self.root)) not in committed:
                log.warning("deleting %s: its batch was never committed (crash in mid-batch)", f)
                f.unlink()
        for f in self.root.glob("**/*.tmp"):
            f.unlink()
        return next_offset

    def write_batch(self, partition: int, records: list[Record]) -> tuple[int, int]:
        """Write one Kafka partition's batch (offsets in order); return (events written, invalid messages)."""
        if not records:
            return 0, 0
        first, last = records[0].offset, records[-1].offset
        name = _name(partition, first, last)
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        invalid = []
        for rec in records:
            row = _row(rec)
            if row is None:
                invalid.append(rec)
                continue
            groups[(row["ts"].strftime("%Y-%m-%d"), row["experiment"] or UNATTACHED)].append(row)
        files = []
        for (day, experiment), rows in sorted(groups.items()):
            d = self.root / f"date={day}" / f"experiment={experiment}"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{name}.parquet"
            tmp = path.with_suffix(".parquet.tmp")
            table = pa.Table.from_pylist(rows, schema=SCHEMA)
            pq.write_table(table, tmp, compression="zstd")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(d)
            files.append(str(path.relative_to(self.root)))
        if invalid:
            bad = self.root / "_invalid" / f"{name}.jsonl"
            bad.write_bytes(b"".join(orjson.dumps({"partition": r.partition, "offset": r.offset,
                                                   "value": r.value.decode(errors="replace")}) + b"\n"
                                     for r in invalid))
            log.error("%d messages of partition %d are not valid events; kept in %s", len(invalid), partition, bad)
        marker = self.commits / f"{name}.json"
        tmp_marker = marker.with_suffix(".json.tmp")
        tmp_marker.write_text(json.dumps({"partition": partition, "first": first, "last": last, "files": files,
                                          "events": len(records) - len(invalid), "invalid": len(invalid),
                                          "written_at": datetime.now(UTC).isoformat()}))
        with open(tmp_marker, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_marker, marker)
        fsync_dir(self.commits)
        return len(records) - len(invalid), len(invalid)

    def glob(self, experiment: str) -> str:
        """Return the Parquet glob of one experiment (``*``: every experiment and the unattached
        outcomes), for DuckDB's read_parquet."""
        return str(self.root / "date=*" / f"experiment={experiment}" / "*.parquet")

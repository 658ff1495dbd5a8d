"""The Parquet lake: events from Kafka, partitioned by date and experiment, written exactly once.

Layout under ``analyzer.lake_dir`` (a directory, or an object store's prefix: :mod:`.lake_storage`)::

    date=2026-11-27/experiment=support-ft/p3-00000000000000001200-00000000000000001899.parquet
    _commits/p3-00000000000000001200.json      files of the batch starting at offset 1200, and its last
    _invalid/p3-....jsonl                      messages that are not valid events

A batch of one Kafka partition becomes one file per (date, experiment), named by the partition
and the batch's offset range, then a commit marker listing them. The marker is the commit: when a
writer is assigned a partition, that partition's files without a marker (a crash in mid-batch)
are deleted, and its next offset is read from the markers, so the lake never holds an offset twice
whatever Kafka's committed offsets say. The marker is named by the batch's first offset and created
only if absent: two analyzer replicas that both believe they own a partition (one of them paused
past its session) cannot both commit it; the loser deletes its files and reads the partition's
position again. Queries still deduplicate by ``event_id``: the proxy delivers at least once.
Prompt and completion text never enter the lake.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from ..events import parse_event
from .lake_storage import open_storage

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
    # exposures: the request's segment attributes (client, allowed attributes; docs/segments.md), JSON
    ("attributes", pa.string()),
    ("holdout", pa.bool_()),  # exposures of units the long-term holdout kept on the control (docs/holdout.md)
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
    for col in ("features", "drifted_features", "evidence", "answer", "changes", "scores", "attributes"):
        if row.get(col) is not None:
            row[col] = orjson.dumps(row[col]).decode()
    row["kafka_partition"], row["kafka_offset"] = rec.partition, rec.offset
    return row


DERIVED_COLUMNS: dict[str, tuple[str, pa.DataType]] = {
    "language": ("json_extract_string(features, '$.language')", pa.string()),
    "user_turns": ("CAST(json_extract_string(features, '$.user_turns') AS DOUBLE)", pa.float64()),
}
"""The prompt features the analyzer reads (segments, conversation length), as columns of their own: the
lake keeps them inside the ``features`` JSON, the rollups (which drop ``features``) as columns."""

ANALYSIS_SCHEMA = pa.schema([f for f in SCHEMA if f.name != "features"]
                            + [pa.field(name, t) for name, (_, t) in DERIVED_COLUMNS.items()])
"""The columns the analyzer reads an event with (the table ``ev``, a rollup's rows)."""

_SQL_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE",
              pa.bool_(): "BOOLEAN"}


def sql_type(t: pa.DataType) -> str:
    """Return the SQL type of a lake column's Arrow type."""
    return "TIMESTAMPTZ" if pa.types.is_timestamp(t) else _SQL_TYPES[t]


def analysis_columns(present: Iterable[str], schema: pa.Schema = ANALYSIS_SCHEMA) -> str:
    """Return the SELECT list that reads lake or rollup files (whose columns are ``present``) as ``schema``.

    A derived column comes from the file's own column where it has one (a rollup) and from
    ``features`` otherwise (the lake); a column the files predate reads as NULL, as DuckDB's
    ``union_by_name`` reads a file without it next to one with it.
    """
    have = set(present)
    out = []
    for f in schema:
        sources = [f.name] if f.name in have else []
        if f.name in DERIVED_COLUMNS and "features" in have:
            sources.append(DERIVED_COLUMNS[f.name][0])
        if sources == [f.name]:
            out.append(f.name)
            continue
        expr = sources[0] if len(sources) == 1 else f"coalesce({', '.join(sources)})" if sources else "NULL"
        out.append(f"CAST({expr} AS {sql_type(f.type)}) AS {f.name}")
    return ", ".join(out)


def file_columns(con: Any, uris: str | list[str]) -> list[str]:
    """Return the columns of Parquet files as DuckDB reads them together (``union_by_name``)."""
    return [row[0] for row in con.execute("DESCRIBE SELECT * FROM read_parquet(?, union_by_name = true)",
                                          [uris]).fetchall()]


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order (missing ones as nulls): files written
    before a column existed read as DuckDB's ``union_by_name`` and Spark's ``mergeSchema`` read them."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _name(partition: int, first: int, last: int) -> str:
    return f"p{partition}-{first:020d}-{last:020d}"


def marker_name(partition: int, first: int) -> str:
    """Return the commit marker of a batch: named by its partition and first offset only, so that two
    writers of the same offsets race for one name (the fence between replicas)."""
    return f"_commits/p{partition}-{first:020d}.json"


class BatchConflictError(RuntimeError):
    """Another writer committed a batch starting at these offsets first (this one's files were removed)."""


class Lake:
    """Writes batches atomically and recovers the next offset of each Kafka partition.

    Several writers share a lake, each writing only the partitions Kafka assigned it; the commit
    marker, created exclusively, keeps any two of them from committing the same offsets. Readers
    (the report) take no part in it.
    """

    def __init__(self, root: str | Path) -> None:
        self.storage = open_storage(root)
        self.location = str(self.storage)

    def markers(self, partition: int | None = None, since: dict[int, int] | None = None) -> list[dict[str, Any]]:
        """Return the commit markers (of one partition, or of all), each with its files and offsets; with
        ``since`` (partition -> offset), only the batches from that offset on (the others are not read:
        a marker's name says where its batch starts)."""
        pattern = "_commits/*.json" if partition is None else f"_commits/p{partition}-*.json"
        out = []
        for rel in self.storage.list(pattern):
            start = _batch_start(rel)
            if since and start is not None and start[1] < since.get(start[0], 0):
                continue
            out.append(json.loads(self.storage.read(rel)))
        return out

    def recover(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Delete files of uncommitted batches and writes left half done (of ``partitions``, or of every
        partition); return the next offset to read per Kafka partition.

        A writer recovers only the partitions it was just assigned: another replica may be writing the
        others right now.
        """
        wanted = None if partitions is None else set(partitions)
        only = next(iter(wanted)) if wanted is not None and len(wanted) == 1 else None
        committed: set[str] = set()
        next_offset: dict[int, int] = {}
        for data in self.markers(only):
            p = data["partition"]
            if wanted is not None and p not in wanted:
                continue
            committed.update(data["files"])
            next_offset[p] = max(next_offset.get(p, 0), data["last"] + 1)
        def mine(rel: str) -> bool:
            start = _batch_start(rel)
            return wanted is None or (start is not None and start[0] in wanted)

        for rel in self.storage.list("date=*/experiment=*/*.parquet"):
            if rel not in committed and mine(rel):
                log.warning("deleting %s: its batch was never committed (crash in mid-batch)", rel)
                self.storage.delete(rel)
        for pattern in ("date=*/experiment=*/*.tmp", "_commits/*.tmp", "_invalid/*.tmp"):
            for rel in self.storage.list(pattern):  # local writes cut short before their rename
                if mine(rel):
                    self.storage.delete(rel)
        return next_offset

    def write_batch(self, partition: int, records: list[Record]) -> tuple[int, int]:
        """Write one Kafka partition's batch (offsets in order); return (events written, invalid messages).

        Raises :class:`BatchConflictError` when another writer committed a batch from the same first
        offset (it owned the partition meanwhile): this batch's files are deleted, nothing is committed.
        """
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
        written: dict[str, bytes] = {}
        for (day, experiment), rows in sorted(groups.items()):
            rel = f"date={day}/experiment={experiment}/{name}.parquet"
            sink = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), sink, compression="zstd")
            written[rel] = sink.getvalue().to_pybytes()
            self.storage.write(rel, written[rel])
        files = list(written)
        bad = f"_invalid/{name}.jsonl"
        if invalid:
            self.storage.write(bad, b"".join(orjson.dumps({"partition": r.partition, "offset": r.offset,
                                                           "value": r.value.decode(errors="replace")}) + b"\n"
                                             for r in invalid))
        marker = json.dumps({"partition": partition, "first": first, "last": last, "files": files,
                             "events": len(records) - len(invalid), "invalid": len(invalid),
                             "written_at": datetime.now(UTC).isoformat()}).encode()
        if not self.storage.create_exclusive(marker_name(partition, first), marker):
            for rel in files + ([bad] if invalid else []):
                self.storage.delete(rel)
            raise BatchConflictError(f"offsets {first}-{last} of partition {partition} were committed by another "
                                     "writer (this analyzer no longer owned the partition)")
        for rel, data in written.items():
            # committed, but another replica's recovery (it took the partition while this one was paused)
            # may have deleted the files before the marker existed: the marker is the truth, write them again
            if not self.storage.exists(rel):
                log.warning("%s was deleted before its batch was committed; written again", rel)
                self.storage.write(rel, data)
        if invalid:
            log.error("%d messages of partition %d are not valid events; kept in %s/%s", len(invalid), partition,
                      self.location, bad)
        return len(records) - len(invalid), len(invalid)

    def files(self, experiment: str, days: Iterable[date]) -> list[str]:
        """Return the Parquet files of ``experiment`` (``*``: of every one) dated on ``days``, sorted."""
        return sorted(rel for day in set(days)
                      for rel in self.storage.list(f"date={day.isoformat()}/experiment={experiment}/*.parquet"))

    def has_files(self, experiment: str) -> bool:
        """Return True when the lake holds Parquet files of ``experiment`` (``*``: of any)."""
        return bool(self.storage.list(f"date=*/experiment={experiment}/*.parquet"))

    def glob(self, experiment: str) -> str:
        """Return the Parquet glob of one experiment (``*``: every experiment and the unattached
        outcomes), as the query engines read it (a path, or the object store's URI)."""
        return self.storage.uri(f"date=*/experiment={experiment}/*.parquet")


def _batch_start(rel: str) -> tuple[int, int] | None:
    """Return the Kafka partition and first offset in a lake file's name (``p3-<first>[-<last>]...``),
    or None."""
    m = re.match(r"p(\d+)-(\d+)", rel.rsplit("/", 1)[-1])
    return None if m is None else (int(m.group(1)), int(m.group(2)))

"""Daily rollups: each unit's events kept by its first-exposure day, so that a report reads its own days.

The full recomputation reads every event of the phase (and, for CUPED, the whole lake) to decide
which units were first exposed in the period and what each did. The rollups keep that work done:
under ``_rollups/experiment=KEY/phase=N/`` in the lake,

- ``index.parquet``: each unit's first non-forced exposure in the phase (``unit_id``, ``first_ts``);
- ``units/day=D.parquet``: every exposure, response and outcome of the phase of the units first
  exposed on day D, wherever in time they fall (early, late, returning), in the lake's schema;
- ``history/day=D.parquet`` (CUPED): those units' pre-period rows from the whole lake (other
  experiments' exposures, outcomes with or without an experiment) within ``cuped.lookback_days``
  before their first exposure;
- ``pool/day=D.parquet``: the phase's rows that belong to no unit's day yet, by their own day: the
  events of units never exposed (orphan and forced-only outcomes, until an exposure arrives), forced
  (QA) exposures, and control events (the report's timeline);
- ``state.json``: the next offset of each Kafka partition already rolled up, and the settings the
  rollups depend on (a change of ``cuped.lookback_days`` rebuilds them).

:meth:`Rollups.refresh` reads only the batches committed since the last refresh (the lake's commit
markers are a chain per partition) and rewrites only the days they touch. **What forces a day to be
recomputed**: a new event of one of its units (a late outcome, a return, a response), a new unit
first exposed on it, a unit moving to it (an exposure older than its recorded first one arrived
late), an orphan outcome whose unit is now exposed (its rows move from the pool to the unit's day),
and, with CUPED, a new pre-period row of one of its units from anywhere in the lake. Rows are only
ever added or moved, and every read deduplicates by ``event_id``, so a refresh interrupted half way
and run again gives the same tables.

:meth:`Rollups.prepare` builds the tables ``ev`` and ``hist`` of :func:`.kpi_queries.prepare_events`
for a period from: the period's own event files (its days: answers, drift, shadow pairs, returning
units), the rollups of the units first exposed in it, the pool, and, for units of other days seen in
the period, their first exposure from the index (so that they are counted where they belong). The
KPI queries then run unchanged, which is why the numbers equal the full recomputation's
(tests/test_rollups.py). Sums per day would not do: a cap at a quantile of all units' values and the
latency quantiles need the values themselves.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import AnalyzerConfig, ExperimentConfig
from .engines import attach_lake
from .kpi_queries import FIRST_DELIVERY, drop_derived_tables
from .lake import ANALYSIS_SCHEMA, Lake, analysis_columns, conform, file_columns, sql_type

log = logging.getLogger(__name__)

ROLLUP_VERSION = 3  # 2: the derived feature columns (language, user_turns) and attributes; 3: holdout
COLUMNS = [f.name for f in ANALYSIS_SCHEMA]
ROW_SCHEMA = ANALYSIS_SCHEMA
HISTORY_SCHEMA = pa.schema([("event_id", pa.string()), ("unit_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
                            ("type", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
                            ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64())])
INDEX_SCHEMA = pa.schema([("unit_id", pa.string()), ("first_ts", pa.timestamp("us", tz="UTC"))])
REFRESH_CHUNK_EVENTS = 2_000_000
"""Batches are rolled up this many events at a time at most (a first refresh of a large lake)."""


@dataclass
class RefreshStats:
    """What one refresh did."""

    batches: int = 0
    events: int = 0
    new_units: int = 0
    moved_units: int = 0
    unit_days: int = 0
    pool_days: int = 0
    history_days: int = 0
    seconds: float = 0.0
    rebuilt: bool = False


def _day(value: datetime) -> date:
    return value.astimezone(UTC).date()


def _days(first: date, last: date) -> list[date]:
    """Return the days from ``first`` to ``last``, both included."""
    return [first + timedelta(days=k) for k in range((last - first).days + 1)]


def _arrow(con: Any, sql: str, params: list[Any] | None = None) -> pa.Table:
    """Return the rows of a DuckDB query as an Arrow table."""
    return con.sql(sql, params=params).to_arrow_table()


class Rollups:
    """The rollups of one experiment's current phase in ``lake`` (see the module)."""

    def __init__(self, lake: Lake, exp: ExperimentConfig, cfg: AnalyzerConfig) -> None:
        self.lake = lake
        self.exp = exp
        self.cfg = cfg
        self.base = f"_rollups/experiment={exp.key}/phase={exp.phase}"
        self.settings = {"version": ROLLUP_VERSION, "cuped": cfg.cuped.enabled,
                         "lookback_days": cfg.cuped.lookback_days if cfg.cuped.enabled else None}

    # -- files --------------------------------------------------------------------------------
    def _rel(self, kind: str, day: date) -> str:
        return f"{self.base}/{kind}/day={day.isoformat()}.parquet"

    def _days(self, kind: str) -> dict[date, str]:
        out = {}
        for rel in self.lake.storage.list(f"{self.base}/{kind}/day=*.parquet"):
            out[date.fromisoformat(rel.rsplit("day=", 1)[1].removesuffix(".parquet"))] = rel
        return out

    def _write(self, rel: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.lake.storage.write(rel, sink.getvalue().to_pybytes())

    def _state(self) -> dict[str, Any] | None:
        rels = self.lake.storage.list(f"{self.base}/state.json")
        return json.loads(self.lake.storage.read(rels[0])) if rels else None

    def _uris(self, rels: list[str]) -> list[str]:
        return [self.lake.storage.uri(r) for r in rels]

    # -- refresh ------------------------------------------------------------------------------
    def refresh(self) -> RefreshStats:
        """Roll up the batches committed since the last refresh (all of them the first time, or when the
        settings changed); return what was done."""

        t0 = time.perf_counter()
        stats = RefreshStats()
        state = self._state()
        if state is None or state.get("settings") != self.settings:
            stats.rebuilt = True
            for rel in self.lake.storage.list(f"{self.base}/*/day=*.parquet") + self.lake.storage.list(
                    f"{self.base}/index.parquet"):
                self.lake.storage.delete(rel)
            state = {"settings": self.settings, "next_offsets": {}}
        done = {int(p): o for p, o in state["next_offsets"].items()}
        new = sorted((m for m in self.lake.markers(since=done) if m["last"] >= done.get(m["partition"], 0)),
                     key=lambda m: (m["partition"], m["first"]))
        if not new:
            stats.seconds = time.perf_counter() - t0
            return stats
        # a chunk of batches at a time, its progress saved: a first refresh of a large lake holds one chunk's
        # events in memory, not the lake's, and an interrupted one resumes after the last chunk done
        chunks: list[list[dict[str, Any]]] = [[]]
        for m in new:
            if chunks[-1] and sum(c["events"] for c in chunks[-1]) + m["events"] > REFRESH_CHUNK_EVENTS:
                chunks.append([])
            chunks[-1].append(m)
        for chunk in chunks:
            con = self._connect()
            try:
                self._refresh(con, chunk, stats)
            finally:
                con.close()
            for m in chunk:
                done[m["partition"]] = max(done.get(m["partition"], 0), m["last"] + 1)
            state["next_offsets"] = {str(p): o for p, o in sorted(done.items())}
            state["refreshed_at"] = datetime.now(UTC).isoformat()
            self.lake.storage.write(f"{self.base}/state.json", json.dumps(state, indent=1).encode())
        stats.batches = len(new)
        stats.seconds = time.perf_counter() - t0
        log.info("rollups of %s phase %d: %d batches, %d events, %d new and %d moved units; rewrote %d unit days, "
                 "%d pool days, %d history days in %.1f s", self.exp.key, self.exp.phase, stats.batches, stats.events,
                 stats.new_units, stats.moved_units, stats.unit_days, stats.pool_days, stats.history_days,
                 stats.seconds)
        return stats

    def _connect(self) -> Any:
        """Return a DuckDB connection that reads the lake, in UTC (days are UTC days, as the lake's partitions)."""
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        attach_lake(con, self.lake)
        return con

    def _empty(self, con: Any, name: str, schema: pa.Schema) -> None:
        cols = ", ".join(f"{f.name} {sql_type(f.type)}" for f in schema)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} ({cols})")

    def _read_into(self, con: Any, name: str, rels: list[str], schema: pa.Schema, where: str = "TRUE",
                   params: list[Any] | None = None) -> None:
        """Create the temp table ``name`` from the files ``rels`` (empty, with ``schema``, if there are none)."""
        if not rels:
            self._empty(con, name, schema)
            return
        uris = self._uris(rels)
        cols = analysis_columns(file_columns(con, uris), schema) if schema is ROW_SCHEMA else \
            ", ".join(f.name for f in schema)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {cols} FROM read_parquet(?, union_by_name = true) "
                    f"WHERE {where}", [uris, *(params or [])])

    def _refresh(self, con: Any, new: list[dict[str, Any]], stats: RefreshStats) -> None:
        key, phase = self.exp.key, self.exp.phase
        mine = f"/experiment={key}/"
        new_files = sorted({f for m in new for f in m["files"]})
        cols = ", ".join(COLUMNS)
        # the new events of the phase
        self._read_into(con, "n", [f for f in new_files if mine in f], ROW_SCHEMA, "phase = ?", [phase])
        stats.events += con.execute("SELECT count(*) FROM n").fetchone()[0]
        # the index: each unit's first non-forced exposure, old and new
        index_rels = self.lake.storage.list(f"{self.base}/index.parquet")
        self._read_into(con, "idx_old", index_rels, INDEX_SCHEMA)
        con.execute("""
            CREATE OR REPLACE TEMP TABLE idx AS
            SELECT unit_id, min(first_ts) AS first_ts FROM (
                SELECT unit_id, first_ts FROM idx_old
                UNION ALL SELECT unit_id, min(ts) FROM n
                WHERE type = 'exposure' AND NOT coalesce(forced, false) AND unit_id IS NOT NULL GROUP BY unit_id)
            GROUP BY unit_id""")
        # units that are new, or whose first exposure moved (an older exposure arrived late)
        con.execute("""
            CREATE OR REPLACE TEMP TABLE changed AS
            SELECT i.unit_id, CAST(o.first_ts AS DATE) AS old_day, CAST(i.first_ts AS DATE) AS new_day,
                   o.unit_id IS NULL AS is_new
            FROM idx i LEFT JOIN idx_old o USING (unit_id)
            WHERE o.unit_id IS NULL OR o.first_ts <> i.first_ts""")
        new_units, moved_units = (int(v or 0) for v in con.execute(
            "SELECT count(*) FILTER (WHERE is_new), count(*) FILTER (WHERE NOT is_new) FROM changed").fetchone())
        stats.new_units += new_units
        stats.moved_units += moved_units
        unit_days, pool_days = self._days("units"), self._days("pool")
        # the pool's rows of units that now have an exposure move to their unit's day
        self._read_into(con, "pool_old", list(pool_days.values()), ROW_SCHEMA)
        is_unit_row = ("type IN ('exposure', 'response', 'outcome') AND NOT (type = 'exposure' AND "
                       "coalesce(forced, false)) AND unit_id IN (SELECT unit_id FROM idx)")
        moved_rows = "unit_id IN (SELECT unit_id FROM changed WHERE NOT is_new)"
        old_days_of_moved = [r[0] for r in con.execute(
            "SELECT DISTINCT old_day FROM changed WHERE NOT is_new").fetchall()]
        self._read_into(con, "moving", [unit_days[d] for d in old_days_of_moved if d in unit_days], ROW_SCHEMA,
                        moved_rows)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE placed AS
            SELECT CAST(i.first_ts AS DATE) AS day, r.* FROM (
                SELECT {cols} FROM n WHERE {is_unit_row}
                UNION ALL SELECT {cols} FROM pool_old WHERE {is_unit_row}
                UNION ALL SELECT {cols} FROM moving) r
            JOIN idx i USING (unit_id)""")
        dirty = {r[0] for r in con.execute("SELECT DISTINCT day FROM placed").fetchall()} | set(old_days_of_moved)
        for day in sorted(dirty):
            self._read_into(con, "old_day", [unit_days[day]] if day in unit_days else [], ROW_SCHEMA,
                            f"NOT ({moved_rows})")
            table = _arrow(con, f"SELECT {cols} FROM old_day UNION ALL SELECT {cols} FROM placed WHERE day = ? "
                           "ORDER BY unit_id, ts", [day])
            self._store("units", day, table, ROW_SCHEMA)
        stats.unit_days += len(dirty)
        # the pool: what belongs to no unit's day, by its own day
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE pooled AS
            SELECT CAST(ts AS DATE) AS day, {cols} FROM n
            WHERE NOT ({is_unit_row}) AND (type IN ('response', 'outcome', 'control')
                                           OR (type = 'exposure' AND coalesce(forced, false)))""")
        promoted_days = [r[0] for r in con.execute(
            f"SELECT DISTINCT CAST(ts AS DATE) FROM pool_old WHERE {is_unit_row}").fetchall()]
        pool_dirty = {r[0] for r in con.execute("SELECT DISTINCT day FROM pooled").fetchall()} | set(promoted_days)
        for day in sorted(pool_dirty):
            table = _arrow(con, f"""
                SELECT {cols} FROM pool_old WHERE CAST(ts AS DATE) = ? AND NOT ({is_unit_row})
                UNION ALL SELECT {cols} FROM pooled WHERE day = ? ORDER BY ts""", [day, day])
            self._store("pool", day, table, ROW_SCHEMA)
        stats.pool_days += len(pool_dirty)
        if self.cfg.cuped.enabled:
            stats.history_days += self._refresh_history(con, new_files)
        self._write(f"{self.base}/index.parquet", conform(
            _arrow(con, "SELECT unit_id, first_ts FROM idx ORDER BY unit_id"), INDEX_SCHEMA))

    def _store(self, kind: str, day: date, table: pa.Table, schema: pa.Schema) -> None:
        rel = self._rel(kind, day)
        if table.num_rows:
            self._write(rel, conform(table, schema))
        else:
            self.lake.storage.delete(rel)

    def _refresh_history(self, con: Any, new_files: list[str]) -> int:
        """Add the CUPED pre-period rows: all of them for new and moved units (read from the lake's days in
        their look-back), the new batches' rows for the others. Return the days rewritten."""
        key, phase = self.exp.key, self.exp.phase
        lookback = timedelta(days=self.cfg.cuped.lookback_days)
        hist_cols = ", ".join(f.name for f in HISTORY_SCHEMA)
        pre = ("(type = 'outcome' OR (type = 'exposure' AND NOT coalesce(forced, false) "
               "AND NOT (coalesce(experiment, '') = ? AND coalesce(phase, -1) = ?)))")
        window = (f"h.ts < i.first_ts AND h.ts >= i.first_ts - INTERVAL {round(lookback.total_seconds() * 1e6):d} "
                  "MICROSECOND")
        # new and moved units: every pre-period row the lake holds, from the days their look-back covers
        span = con.execute("SELECT min(first_ts), max(first_ts) FROM idx WHERE unit_id IN "
                           "(SELECT unit_id FROM changed)").fetchone()
        refetch: list[str] = []
        if span[0] is not None:
            refetch = self.lake.files("*", _days(_day(span[0] - lookback), _day(span[1])))
        self._read_into(con, "h_fetch", refetch, ROW_SCHEMA,
                        f"unit_id IN (SELECT unit_id FROM changed) AND {pre}", [key, phase])
        # the others: the new batches' rows, from every experiment and the outcomes without one
        self._read_into(con, "h_new", new_files, ROW_SCHEMA,
                        f"unit_id IN (SELECT unit_id FROM idx) AND unit_id NOT IN (SELECT unit_id FROM changed) "
                        f"AND {pre}", [key, phase])
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE h_placed AS
            SELECT CAST(i.first_ts AS DATE) AS day, h.{hist_cols.replace(', ', ', h.')}
            FROM (SELECT * FROM h_fetch UNION ALL SELECT * FROM h_new) h JOIN idx i USING (unit_id)
            WHERE {window}""")
        history_days = self._days("history")
        dirty = {r[0] for r in con.execute("SELECT DISTINCT day FROM h_placed").fetchall()} | {
            r[0] for r in con.execute("SELECT DISTINCT old_day FROM changed WHERE NOT is_new").fetchall()}
        for day in sorted(dirty):
            self._read_into(con, "h_old", [history_days[day]] if day in history_days else [], HISTORY_SCHEMA,
                            "unit_id NOT IN (SELECT unit_id FROM changed)")
            table = _arrow(con, f"SELECT {hist_cols} FROM h_old UNION ALL SELECT {hist_cols} FROM h_placed "
                           "WHERE day = ? ORDER BY unit_id, ts", [day])
            self._store("history", day, table, HISTORY_SCHEMA)
        return len(dirty)

    # -- reading ------------------------------------------------------------------------------
    def first_exposures(self) -> tuple[date, date] | None:
        """Return the first and last day on which units were first exposed, from the index (None: none)."""

        rels = self.lake.storage.list(f"{self.base}/index.parquet")
        if not rels:
            return None
        con = self._connect()
        try:
            lo, hi = con.execute("SELECT min(first_ts), max(first_ts) FROM read_parquet(?)",
                                 [self.lake.storage.uri(rels[0])]).fetchone()
        finally:
            con.close()
        return None if lo is None else (_day(lo), _day(hi))

    def period_files(self, start: datetime, end: datetime) -> list[str]:
        """Return the URIs of the experiment's event files of the days of [start, end)."""
        return self._uris(self.lake.files(self.exp.key, _days(_day(start), _day(end - timedelta(microseconds=1)))))

    def prepare(self, con: Any, start: datetime, end: datetime) -> None:
        """Create the tables ``ev`` (and, with CUPED, ``hist``) of the period [start, end) from the period's
        own files and the rollups (see the module): what :func:`.kpi_queries.prepare_events` makes from
        the whole lake, for every unit first exposed in the period."""
        drop_derived_tables(con)
        first_day, last_day = _day(start), _day(end - timedelta(microseconds=1))
        unit_days = [rel for day, rel in self._days("units").items() if first_day <= day <= last_day]
        sources = self.period_files(start, end) + self._uris(unit_days + list(self._days("pool").values()))
        index = self.lake.storage.list(f"{self.base}/index.parquet")
        if not sources or not index:
            raise ValueError(f"no rolled-up events of {self.exp.key} phase {self.exp.phase}: refresh the rollups")
        cols = analysis_columns(file_columns(con, sources))
        # a unit of another day seen in the period: its first exposure, so that it counts on its own day
        synthetic = {"event_id": "'first:' || i.unit_id", "type": "'exposure'", "ts": "i.first_ts",
                     "experiment": "?", "phase": "?", "unit_id": "i.unit_id", "forced": "FALSE",
                     "kafka_partition": "-1", "kafka_offset": "-1"}
        first_cols = ", ".join(f"CAST({synthetic.get(f.name, 'NULL')} AS {sql_type(f.type)}) AS {f.name}"
                               for f in ROW_SCHEMA)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE ev AS
            WITH src AS (SELECT {cols} FROM read_parquet(?, union_by_name = true) WHERE phase = ?),
                 firsts AS (SELECT {first_cols} FROM read_parquet(?) i
                            WHERE (i.first_ts < ? OR i.first_ts >= ?) AND i.unit_id IN (SELECT unit_id FROM src))
            SELECT * FROM (SELECT * FROM src UNION ALL SELECT * FROM firsts) u
            {FIRST_DELIVERY}
        """, [sources, self.exp.phase, self.exp.key, self.exp.phase, self.lake.storage.uri(index[0]), start, end])
        if not self.cfg.cuped.enabled:
            return
        history = [rel for day, rel in self._days("history").items() if first_day <= day <= last_day]
        if history:
            con.execute(f"CREATE OR REPLACE TEMP TABLE hist AS SELECT unit_id, ts, type, metric, value FROM "
                        f"read_parquet(?, union_by_name = true) {FIRST_DELIVERY}", [self._uris(history)])
        else:
            con.execute("CREATE OR REPLACE TEMP TABLE hist (unit_id VARCHAR, ts TIMESTAMPTZ, type VARCHAR, "
                        "metric VARCHAR, value DOUBLE)")

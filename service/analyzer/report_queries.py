"""The report's queries besides the KPIs: the drift detector's changes, each arm's answers per day, and
the rollout's state changes, from the period's events (the ``ev`` table)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import duckdb

from .kpi_queries import has_column


def first_exposure(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """Return the first exposure of the period's units (the ``units`` table), or None without units."""
    row = con.execute("SELECT min(first_ts) FROM units").fetchone()
    if not row or row[0] is None:
        return None
    first: datetime = row[0]
    return first.astimezone(UTC) if first.tzinfo else first.replace(tzinfo=UTC)  # Spark: naive, in UTC


def drift_events(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Return the drift detector's verdict changes in the period (from the ``ev`` table)."""
    if not has_column(con, "detector"):
        return []
    changes = "changes" if has_column(con, "changes") else "NULL"
    rows = con.execute(
        f"SELECT ts, coalesce(arm, 'all'), detector, detected, drifted_features, {changes} FROM ev "
        "WHERE type = 'drift' AND ts >= ? AND ts < ? ORDER BY ts",
        [start, end]).fetchall()
    return [{"ts": ts.isoformat(), "arm": arm, "detector": det, "detected": bool(hit),
             "features": json.loads(feats) if feats else [], "changes": json.loads(ch) if ch else []}
            for ts, arm, det, hit, feats, ch in rows]

def answers(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Return each arm's successful answers per day: count, median completion tokens, and the shares of
    refusals, empty and truncated answers (the shipper's ``answer`` features; docs/drift.md)."""
    if not has_column(con, "answer") or not has_column(con, "status_code"):
        return []
    rows = con.execute(
        "SELECT arm, CAST(ts AS DATE) AS day, count(*), median(completion_tokens), "
        "avg(CAST(json_extract(answer, '$.refusal') AS DOUBLE)), avg(CAST(json_extract(answer, '$.empty') AS DOUBLE)), "
        "avg(CASE WHEN finish_reason = 'length' THEN 1.0 ELSE 0.0 END) "
        "FROM ev WHERE type = 'response' AND status_code < 400 AND error IS NULL AND NOT coalesce(forced, false) "
        "AND ts >= ? AND ts < ? GROUP BY ALL ORDER BY arm, day",
        [start, end]).fetchall()
    return [{"arm": arm, "day": day.isoformat(), "answers": int(n), "median_tokens": tokens, "refusal_share": refusal,
             "empty_share": empty, "truncated_share": truncated}
            for arm, day, n, tokens, refusal, empty, truncated in rows]

def timeline(con: duckdb.DuckDBPyConnection, end: datetime) -> list[dict[str, Any]]:
    """Return the phase's state changes (``control`` events) up to the period's end, oldest first."""
    if not has_column(con, "action"):
        return []
    rows = con.execute(
        "SELECT ts, action, status, coverage, actor, changed_by, reason, evidence FROM ev WHERE type = 'control' "
        "AND ts < ? ORDER BY revision, ts", [end]).fetchall()
    return [{"ts": ts.isoformat(), "action": action, "status": status, "coverage": coverage, "actor": actor,
             "by": by, "reason": reason, "evidence": json.loads(evidence) if evidence else None}
            for ts, action, status, coverage, actor, by, reason, evidence in rows]

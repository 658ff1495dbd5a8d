"""One metric's sufficient statistics per arm, by SQL over the period's tables (``units``, ``outc``,
``resp``, ``prices``, and CUPED's ``pre_unit`` and ``pre_outc``; built by :mod:`.kpi_queries`).

Each statement groups by the arm, or by the arm and a column of ``units`` (``by``): the unit's
first-exposure ``day`` (the report's daily series sums the days, :mod:`.daily_series`) or its segment
``seg`` (:mod:`.segments`). Rows are read by column name, never by position arithmetic. The built-in
metrics' per-request values come from :mod:`..metric_catalog`, the one place they are defined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from splitwatch.stats import MetricDefinition, MomentStats, QuantileStats, RatioStats, SampleStats
from splitwatch.stats.quantile import quantile_design_effect, rank_bounds

from ..metric_catalog import LATENCY_OK_SQL, PER_REQUEST, is_latency_quantile
from .activity_statements import activity_values

Stats = SampleStats | RatioStats | QuantileStats | MomentStats
Key = Any  # the arm, or (arm, the value of the ``by`` column)
History = dict[Key, tuple[float, int]]  # (units with pre-period data, units) per key


def ident(name: str | None) -> str:
    """Return a metric name safe to inline in SQL (config names match [A-Za-z0-9._-]+)."""
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise ValueError(f"invalid metric name {name!r}")
    return name


def _keys(by: str | None) -> str:
    return "arm, grp" if by else "arm"


def _grp(by: str | None, table: str = "") -> str:
    """Return the grouping column's expression (``0`` without ``by``)."""
    if by is None:
        return "0"
    if by not in ("day", "seg"):
        raise ValueError(f"cannot group by {by!r}")
    return f"{table}{by}"


def _named(con: Any, sql: str, names: Sequence[str], params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Return the rows of ``sql`` as dicts keyed by ``names`` (the SELECT list's order)."""
    return [dict(zip(names, row, strict=True)) for row in con.execute(sql, params or []).fetchall()]


def _key(row: dict[str, Any], by: str | None) -> Key:
    if by is None:
        return row["arm"]
    return (row["arm"], int(row["grp"]) if by == "day" else row["grp"])


def _cap_sql(m: MetricDefinition, column: str, source: str) -> str:
    """Return a one-row SELECT of a metric's cap over all units' ``column`` of ``source`` (NULL: no cap)."""
    if m.cap is None:
        return "SELECT CAST(NULL AS DOUBLE) AS cap"
    if m.cap.value is not None:
        return f"SELECT CAST({float(m.cap.value)!r} AS DOUBLE) AS cap"
    return f"SELECT quantile_cont({column}, {float(m.cap.quantile):.17g}) AS cap FROM {source}"  # type: ignore[arg-type]


def _note_cap(rows: list[dict[str, Any]], caps: dict[str, float], name: str) -> None:
    for row in rows:
        if row.get("cap") is not None:
            caps[name] = float(row["cap"])


_RATIO_NAMES = ["arm", "grp", "n", "num_sum", "num_ss", "den_sum", "den_ss", "cross", "cap"]


def _ratio_stats(rows: list[dict[str, Any]], by: str | None) -> dict[Key, Stats]:
    """Return the RatioStats of rows named by _RATIO_NAMES, per key (rows with no unit left out)."""
    return {_key(r, by): RatioStats(int(r["n"]), float(r["num_sum"]), float(r["num_ss"]), float(r["den_sum"]),
                                        float(r["den_ss"]), float(r["cross"])) for r in rows if r["n"]}


def _ratio(con: Any, per_unit: str, m: MetricDefinition, caps: dict[str, float], by: str | None) -> dict[Key, Stats]:
    """Return ratio statistics from a per-unit CTE body with columns arm, grp, unit_id, num, den."""
    rows = _named(con, f"""
        WITH pu AS ({per_unit}), c AS ({_cap_sql(m, "num", "pu")}),
             pc AS (SELECT arm, grp, CASE WHEN c.cap IS NULL THEN num ELSE least(num, c.cap) END AS num, den
                    FROM pu, c)
        SELECT arm, {"grp" if by else "0"}, count(*), sum(num), sum(num * num), sum(den), sum(den * den),
               sum(num * den), any_value(c.cap)
        FROM pc, c GROUP BY {_keys(by)}""", _RATIO_NAMES)
    _note_cap(rows, caps, m.name)
    return _ratio_stats(rows, by)


def _per_request(name: str, by: str | None) -> str:
    """Return the per-unit CTE body of a built-in per-request metric (its value from the catalog)."""
    spec = PER_REQUEST[name]
    grp, join = (_grp(by, "u."), "JOIN units u ON u.unit_id = r.unit_id") if by else ("0", "")
    return f"""SELECT r.arm, {grp} AS grp, r.unit_id, coalesce(sum({spec.value_sql}), 0)::DOUBLE AS num,
                      count(*)::DOUBLE AS den
               FROM resp r {join} LEFT JOIN prices p ON p.model = r.upstream_model
               GROUP BY r.arm, r.unit_id{", " + grp if by else ""}"""


def unit_values(m: MetricDefinition, by: str | None = None) -> tuple[str, list[str]]:
    """Return CTEs ending in ``pu`` (arm, grp, unit_id, the metric's per-unit columns, capped, and the cap)
    and those columns: ``y`` (a binary's max, a continuous metric's mean, a ratio's numerator), ``d``
    (a ratio's denominator). ``grp`` is the unit's ``by`` column of ``units`` (its first-exposure day, its
    segment), else 0. Activity metrics come from :mod:`.activity_statements`."""
    if m.activity is not None:
        return activity_values(m, _grp(by, "u.") if by else None, _cap_sql)
    name = ident(m.name)
    day, by = (_grp(by, "u."), ", " + _grp(by, "u.")) if by else ("0", "")
    if m.kind == "binary":
        return f"""pu AS (SELECT u.unit_id, u.arm, {day} AS grp,
                          coalesce(max(o.value) FILTER (WHERE o.attributed), 0)::DOUBLE AS y,
                          CAST(NULL AS DOUBLE) AS cap
                   FROM units u LEFT JOIN outc o ON o.unit_id = u.unit_id AND o.metric = '{name}'
                   GROUP BY u.unit_id, u.arm{by})""", ["y"]
    if m.kind == "continuous":
        return f"""raw AS (SELECT u.unit_id, u.arm, {day} AS grp, avg(o.value) AS v FROM units u
                    JOIN outc o ON o.unit_id = u.unit_id
                    WHERE o.metric = '{name}' AND o.attributed GROUP BY u.unit_id, u.arm{by}),
               c AS ({_cap_sql(m, "v", "raw")}),
               pu AS (SELECT unit_id, arm, grp, CASE WHEN c.cap IS NULL THEN v ELSE least(v, c.cap) END AS y, c.cap
                      FROM raw, c)""", ["y"]
    if m.denominator == "requests":
        den = "u.requests::DOUBLE"
    else:
        den = f"coalesce(sum(o.value) FILTER (WHERE o.attributed AND o.metric = '{ident(m.denominator)}'), 0)"
    return f"""raw AS (SELECT u.arm, {day} AS grp, u.unit_id,
                  coalesce(sum(o.value) FILTER (WHERE o.attributed AND o.metric = '{ident(m.numerator)}'), 0) AS num,
                  {den} AS den
                  FROM units u LEFT JOIN outc o ON o.unit_id = u.unit_id GROUP BY u.arm, u.unit_id, u.requests{by}),
               c AS ({_cap_sql(m, "num", "raw")}),
               pu AS (SELECT unit_id, arm, grp, CASE WHEN c.cap IS NULL THEN num ELSE least(num, c.cap) END AS y,
                             den AS d, c.cap FROM raw, c)""", ["y", "d"]


def metric_stats(con: Any, m: MetricDefinition, caps: dict[str, float] | None = None,
                 by: str | None = None) -> dict[Key, Stats]:
    """Return one metric's statistics per arm (per arm and ``by`` column of ``units``; quantiles: per arm only).

    A metric's ``cap`` applies to each unit's value (continuous) or numerator (ratio) before the
    sums, at a value or at a quantile of all units of all arms; the cap used goes into ``caps``.
    """
    caps = {} if caps is None else caps
    if m.kind == "quantile" and is_latency_quantile(m.name):
        return latency_quantile_stats(con, m.quantile or 0.5)  # type: ignore[return-value]
    if m.name in PER_REQUEST:
        return _ratio(con, _per_request(m.name, by), m, caps, by)
    if m.kind not in ("binary", "continuous") and m.numerator is None and m.activity is None:
        return {}
    values, _ = unit_values(m, by)
    if m.kind == "binary":
        rows = _named(con, f"WITH {values} SELECT arm, {'grp' if by else '0'}, count(*), sum(y), sum(y * y) "
                           f"FROM pu GROUP BY {_keys(by)}", ["arm", "grp", "n", "sum", "ss"])
        return {_key(r, by): SampleStats(int(r["n"]), float(r["sum"] or 0.0), float(r["ss"] or 0.0))
                for r in rows if r["n"]}
    if m.kind == "continuous":
        # sums of (v - k), k the mean over all units: raw sums of squares of values near 1e6 with a
        # spread of 0.01 lose the variance to cancellation (stats.SampleStats.shift)
        rows = _named(con, f"""
            WITH {values}, k AS (SELECT avg(y) AS k FROM pu)
            SELECT arm, {'grp' if by else '0'}, count(*), sum(y - k), sum((y - k) * (y - k)), any_value(k),
                   any_value(cap)
            FROM pu, k GROUP BY {_keys(by)}""", ["arm", "grp", "n", "sum", "ss", "k", "cap"])
        _note_cap(rows, caps, m.name)
        return {_key(r, by): SampleStats(int(r["n"]), float(r["sum"]), float(r["ss"]), float(r["k"]))
                for r in rows if r["n"]}
    return _outcome_ratio(con, m, values, caps, by)


def _outcome_ratio(con: Any, m: MetricDefinition, values: str, caps: dict[str, float],
                   by: str | None) -> dict[Key, Stats]:
    """Return a configured ratio metric's statistics (its numerator already capped in ``pu``)."""
    rows = _named(con, f"""
        WITH {values}
        SELECT arm, {'grp' if by else '0'}, count(*), sum(y), sum(y * y), sum(d), sum(d * d), sum(y * d),
               any_value(cap)
        FROM pu GROUP BY {_keys(by)}""", _RATIO_NAMES)
    _note_cap(rows, caps, m.name)
    return _ratio_stats(rows, by)


def covariates(m: MetricDefinition) -> tuple[str, list[tuple[str, str]]]:
    """Return the join and the covariate columns (expression, name) of a metric: its pre-period value(s)
    and "has history".

    A unit without pre-period data gets 0 and h = 0 (the missing-covariate indicator), never a drop.
    binary: active before (any exposure or outcome) and then its max; continuous: the mean of its
    pre-period values; ratio: the pre-period numerator and denominator sums.
    """
    name = ident(m.name)
    join = (f"LEFT JOIN pre_unit p ON p.unit_id = pu.unit_id "
            f"LEFT JOIN pre_outc q ON q.unit_id = pu.unit_id AND q.metric = '{name}'")
    if m.kind == "binary":
        return join, [("CASE WHEN coalesce(p.events, 0) > 0 THEN coalesce(q.mx, 0) ELSE 0 END", "x"),
                      ("CASE WHEN coalesce(p.events, 0) > 0 THEN 1.0 ELSE 0.0 END", "h")]
    if m.kind == "continuous":
        return join, [("coalesce(q.mean, 0)", "x"), ("CASE WHEN q.mean IS NOT NULL THEN 1.0 ELSE 0.0 END", "h")]
    num = ident(m.numerator)
    join = (f"LEFT JOIN pre_unit p ON p.unit_id = pu.unit_id "
            f"LEFT JOIN pre_outc q ON q.unit_id = pu.unit_id AND q.metric = '{num}'")
    if m.denominator == "requests":
        den, has_den = "coalesce(p.requests, 0)", "coalesce(p.requests, 0) > 0"
    else:
        join += f" LEFT JOIN pre_outc q2 ON q2.unit_id = pu.unit_id AND q2.metric = '{ident(m.denominator)}'"
        den, has_den = "coalesce(q2.total, 0)", "q2.total IS NOT NULL"
    return join, [("coalesce(q.total, 0)::DOUBLE", "x"), (f"{den}::DOUBLE", "w"),
                  (f"CASE WHEN q.total IS NOT NULL OR {has_den} THEN 1.0 ELSE 0.0 END", "h")]


def adjusted_stats(con: Any, m: MetricDefinition, caps: dict[str, float],
                   by: str | None = None) -> tuple[dict[Key, Stats], History]:
    """Return moment statistics (the metric and its covariates) for CUPED per arm (and day), and per
    key the units with pre-period data and the units. Columns are shifted by their means over all
    units (stable sums; the same shift for every day, so days add up)."""
    values, value_cols = unit_values(m, by)
    join, cov = covariates(m)
    cols = value_cols + [name for _, name in cov]
    pairs = [(a, b) for i, a in enumerate(cols) for b in cols[i:]]
    select = ([f"sum({c} - k_{c})" for c in cols] + [f"sum(({a} - k_{a}) * ({b} - k_{b}))" for a, b in pairs]
              + [f"any_value(k_{c})" for c in cols])
    names = (["arm", "grp", "n"] + [f"s_{c}" for c in cols] + [f"c_{a}_{b}" for a, b in pairs]
             + [f"k_{c}" for c in cols] + ["history", "cap"])
    rows = _named(con, f"""
        WITH {values},
             z AS (SELECT pu.*, {', '.join(f'{e} AS {n}' for e, n in cov)} FROM pu {join}),
             k AS (SELECT {', '.join(f'avg({c}) AS k_{c}' for c in cols)} FROM z)
        SELECT arm, {'grp' if by else '0'}, count(*), {', '.join(select)}, sum(h), any_value(cap)
        FROM z, k GROUP BY {_keys(by)}""", names)
    _note_cap(rows, caps, m.name)
    out: dict[Key, Stats] = {}
    history: History = {}
    for r in rows:
        n = int(r["n"])
        if not n:
            continue
        cross = {(a, b): float(r[f"c_{a}_{b}"]) for a, b in pairs}
        matrix = tuple(tuple(cross.get((a, b), cross.get((b, a), 0.0)) for b in cols) for a in cols)
        out[_key(r, by)] = MomentStats(n, tuple(float(r[f"s_{c}"]) for c in cols), matrix,
                                           tuple(float(r[f"k_{c}"]) for c in cols), ratio=m.kind == "ratio")
        history[_key(r, by)] = (float(r["history"]), n)
    return out, history


def history_share(history: History) -> float:
    """Return the share of units with pre-period data (0 when there are no units)."""
    total = sum(n for _, n in history.values())
    return sum(h for h, _ in history.values()) / total if total else 0.0


def latency_quantile_stats(con: Any, p: float) -> dict[str, QuantileStats]:
    """Return per-arm p-quantiles of successful responses' latency from the ``resp`` table.

    Each carries the design effect of requests clustered in units (``stats.quantile``).
    """
    counts = dict(con.execute(f"SELECT arm, count(*) FROM resp WHERE {LATENCY_OK_SQL} GROUP BY arm").fetchall())
    out = {}
    for arm, n in counts.items():
        if n < 2:
            continue
        lo, hi = rank_bounds(int(n), p)
        est, lower, upper = con.execute(
            f"SELECT quantile_cont(latency_ms, [?, ?, ?]) FROM resp WHERE {LATENCY_OK_SQL} AND arm = ?",
            [p, lo, hi, arm]).fetchone()[0]
        if any(v is None or math.isnan(v) for v in (est, lower, upper)):
            continue
        # requests cluster in users: per unit, how many of its requests are at or below the estimate
        below = con.execute(
            "SELECT count(*), sum(s), sum(s * s), sum(r), sum(r * r), sum(s * r) FROM ("
            "  SELECT count(*) FILTER (WHERE latency_ms <= ?)::DOUBLE AS s, count(*)::DOUBLE AS r FROM resp"
            f"  WHERE {LATENCY_OK_SQL} AND arm = ? GROUP BY unit_id)",
            [est, arm]).fetchone()
        deff = quantile_design_effect(RatioStats(int(below[0]), *map(float, below[1:])))
        out[arm] = QuantileStats(int(n), p, float(est), float(lower), float(upper), design_effect=deff)
    return out


def daily_latency_quantiles(con: Any, p: float) -> dict[tuple[str, int], QuantileStats]:
    """Return, per arm and first-exposure day, the p-quantile of the latency of the successful responses
    of the units first exposed up to the end of that day (cumulative, as the report's series plots it).
    Days with no new unit are not listed (nothing changed)."""
    return latency_quantiles_by(con, p, "day")  # type: ignore[return-value]


def latency_quantiles_by(con: Any, p: float, by: str) -> dict[tuple[str, Any], QuantileStats]:
    """Return the p-quantile of successful responses' latency per arm and ``by`` column of ``units``: per
    segment (``seg``), or cumulative over first-exposure days (``day``: each day's units and the days
    before).

    Quantiles do not add up over groups: one statement asks for every level any (arm, group) needs (its
    estimate and rank bounds); a second gives each (arm, group) its design effect.
    """
    cumulative = by == "day"
    col = _grp(by, "u.")
    counts = con.execute(f"SELECT r.arm, {col}, count(*) FROM resp r JOIN units u ON u.unit_id = r.unit_id "
                         f"WHERE {LATENCY_OK_SQL} GROUP BY r.arm, {col}").fetchall()
    n_at: dict[tuple[str, Any], int] = {}
    running: dict[str, int] = {}
    for arm, g, n in sorted(counts, key=lambda r: (r[0], r[1])):
        running[arm] = running.get(arm, 0) + int(n) if cumulative else int(n)
        n_at[(arm, int(g) if cumulative else g)] = running[arm]
    bounds = {key: rank_bounds(n, p) for key, n in n_at.items() if n >= 2}
    if not bounds:
        return {}
    levels = sorted({p, *(level for pair in bounds.values() for level in pair)})
    position = {level: i for i, level in enumerate(levels)}
    # cumulative: each day's group holds the units of that day and every day before
    source, group = (("JOIN (SELECT DISTINCT day FROM units) d ON u.day <= d.day", "d.day") if cumulative
                     else ("", col))
    rows = con.execute(f"""
        SELECT {group}, r.arm, quantile_cont(r.latency_ms, [{', '.join('?' for _ in levels)}])
        FROM resp r JOIN units u ON u.unit_id = r.unit_id {source}
        WHERE {LATENCY_OK_SQL} GROUP BY {group}, r.arm""", levels).fetchall()
    estimates: dict[tuple[str, Any], tuple[float, float, float]] = {}
    for g, arm, values in rows:
        key = (arm, int(g) if cumulative else g)
        if key not in bounds:
            continue
        lo, hi = bounds[key]
        picked = (values[position[p]], values[position[lo]], values[position[hi]])
        if not any(v is None or math.isnan(v) for v in picked):
            estimates[key] = picked
    if not estimates:
        return {}
    con.execute(f"CREATE OR REPLACE TEMP TABLE q_est (grp {'INTEGER' if cumulative else 'VARCHAR'}, arm VARCHAR, "
                "est DOUBLE)")
    con.executemany("INSERT INTO q_est VALUES (?, ?, ?)", [(g, a, float(v[0])) for (a, g), v in estimates.items()])
    # requests cluster in users: per unit, how many of its requests are at or below the group's estimate
    within = "u.day <= q.grp" if cumulative else f"{col} = q.grp"
    below = con.execute(f"""
        SELECT grp, arm, count(*), sum(s), sum(s * s), sum(t), sum(t * t), sum(s * t) FROM (
            SELECT q.grp, q.arm, r.unit_id, count(*) FILTER (WHERE r.latency_ms <= q.est)::DOUBLE AS s,
                   count(*)::DOUBLE AS t
            FROM resp r JOIN units u ON u.unit_id = r.unit_id JOIN q_est q ON q.arm = r.arm AND {within}
            WHERE {LATENCY_OK_SQL} GROUP BY q.grp, q.arm, r.unit_id) b
        GROUP BY grp, arm""").fetchall()
    out = {}
    for g, arm, *sums in below:
        key = (arm, int(g) if cumulative else g)
        deff = quantile_design_effect(RatioStats(int(sums[0]), *map(float, sums[1:])))
        est, lower, upper = estimates[key]
        out[key] = QuantileStats(n_at[key], p, float(est), float(lower), float(upper), design_effect=deff)
    return out

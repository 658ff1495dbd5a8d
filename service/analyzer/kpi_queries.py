"""Lake -> sufficient statistics: SQL run by DuckDB, the embedded engine (only aggregates come back).

Per experiment and phase (counting rules, also in docs/analyzer.md):

- units: a unit's first exposure is its first non-forced exposure in the whole phase; a period
  holds the units first exposed in it (a returning unit belongs to its first period only); a unit
  seen in two arms is excluded and counted (assignment broken);
- every KPI reads only the unit's events within ``attribution_window_hours`` of its first exposure:
  outcomes, responses, and the requests that are the denominator of per-request ratios. Outcomes
  before the first exposure are counted as early, after the window as late; outcomes (timestamped
  in the period) of units never exposed in the phase as orphans, or as forced-only when the unit
  only had forced (QA) requests. None is ever merged in;
- per unit: binary outcome -> max (did it happen, 0 if never reported); continuous -> mean of the
  reported values (units without one are left out); ratio -> sum(numerator) / denominator, units
  with 0/0 stay in n (the ratio of sums over units is what the delta method estimates);
- built-in request-level KPIs from response events: latency quantiles (ms, successful responses),
  ``error_rate`` (5xx and broken streams per request), ``completion_tokens_per_request`` and
  ``cost_per_request`` (from ``analyzer.prices``, by upstream model).

Every event is deduplicated by ``event_id`` first: delivery is at least once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from splitwatch.stats import MetricDefinition, MomentStats, QuantileStats, RatioStats, SampleStats
from splitwatch.stats.quantile import quantile_design_effect, rank_bounds

from ..config import AnalyzerConfig, ExperimentConfig
from ..metric_catalog import builtin_defaults
from .engines import SparkConnection

Stats = SampleStats | RatioStats | QuantileStats | MomentStats


@dataclass
class ExperimentData:
    """Everything the analysis and the report need about one experiment phase and window."""

    experiment: str
    phase: int
    start: datetime | None
    end: datetime | None
    units: dict[str, int]
    requests: dict[str, int]
    metrics: list[MetricDefinition]
    stats: dict[str, dict[str, Stats]]
    multi_arm_units: int = 0
    orphan_outcomes: int = 0
    late_outcomes: int = 0
    forced_requests: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it could not be computed
    early_outcomes: int = 0  # timestamped before the unit's first exposure
    forced_only_outcomes: int = 0  # of units only ever served by forced (QA) requests
    caps: dict[str, float] = field(default_factory=dict)  # metric -> the cap applied to its per-unit values
    # metric -> the share of units with pre-period data, for the metrics adjusted by CUPED
    history_share: dict[str, float] = field(default_factory=dict)


def builtin_metrics(cfg: AnalyzerConfig, with_cost: bool) -> list[MetricDefinition]:
    """Return the request-level KPIs computed from response events for every experiment (role: diagnostic)."""
    names = [f"latency_p{round(q * 100):d}_ms" for q in cfg.latency_quantiles]
    names += ["error_rate", "completion_tokens_per_request"] + (["cost_per_request"] if with_cost else [])
    return [MetricDefinition(name=n, role="diagnostic", **builtin_defaults(n)) for n in names]  # type: ignore[arg-type]


def unit_definition(m: MetricDefinition, cfg: AnalyzerConfig) -> str:
    """Return what a metric's value is, unit by unit, as the queries below compute it (the report's vocabulary)."""
    window = f"{cfg.attribution_window_hours:g} h"
    if m.kind == "quantile":
        return (f"p{m.quantile * 100:g} of the upstream latency (ms) of all successful responses of the arm's "  # type: ignore[operator]
                "users; its variance widened for requests clustered in users (design effect)")
    if m.name in ("error_rate", "completion_tokens_per_request", "cost_per_request"):
        what = {"error_rate": "5xx answers and broken streams", "completion_tokens_per_request": "completion tokens",
                "cost_per_request": "token cost (analyzer.prices)"}[m.name]
        return f"per request: {what} over all the arm's users / their requests (delta method over users)"
    if m.kind == "binary":
        return (f"per user: {m.name} reported as 1 at least once within {window} of the first exposure "
                "(users without a report count as 0)")
    if m.kind == "continuous":
        return (f"per user: mean of the {m.name} values reported within {window} of the first exposure "
                "(users without a report are left out)")
    if m.numerator is not None:
        den = "their requests" if m.denominator == "requests" else f"their sum of {m.denominator}"
        return (f"per {'request' if m.denominator == 'requests' else m.denominator}: sum of {m.numerator} "
                f"within {window} over all the arm's users / {den} (delta method over users)")
    return f"{m.kind} metric {m.name}"


def has_column(con: duckdb.DuckDBPyConnection, column: str) -> bool:
    """Return True when the events table ``ev`` has ``column`` (a lake written before that event type has not)."""
    if isinstance(con, SparkConnection):
        return column in con.columns("ev")
    return bool(con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'ev' "
                            "AND column_name = ?", [column]).fetchone()[0])


FIRST_DELIVERY = "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY kafka_partition, kafka_offset) = 1"
"""Keeps one row per ``event_id``: the proxy delivers at least once."""


def drop_derived_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the tables built from ``ev`` and ``hist`` (stale once those are made again)."""
    for derived in ("unit_facts", "hist", "pre_unit"):
        con.execute(f"DROP TABLE IF EXISTS {derived}")


def prepare_events(con: duckdb.DuckDBPyConnection, glob: str, phase: int, history_glob: str | None = None,
                   experiment: str | None = None) -> None:
    """Materialise the phase's events, deduplicated by event_id, as the temp table ``ev``.

    With ``history_glob`` (the whole lake), also the table ``hist``: the outcomes and non-forced
    exposures of the phase's units anywhere in the lake (other experiments, earlier phases, outcomes
    posted without an experiment), from which CUPED reads each unit's pre-period values.
    Once per analysis (once per report, however many days it plots): the KPI queries all read them.
    """
    drop_derived_tables(con)
    # the globs are parameters, never pasted into the SQL: a lake path may hold a quote
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ev AS
        SELECT * EXCLUDE (features) FROM read_parquet(?, union_by_name = true)
        WHERE phase = ?
        {FIRST_DELIVERY}
    """, [glob, int(phase)])
    if history_glob is None:
        return
    # the phase's own exposures are never before a unit's first one: left out, they are half the lake
    own = "AND NOT (experiment = ? AND phase = ?)" if experiment else ""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE hist AS
        SELECT unit_id, ts, type, metric, value FROM read_parquet(?, union_by_name = true)
        WHERE (type = 'outcome' OR (type = 'exposure' AND NOT forced {own}))
          AND unit_id IN (SELECT unit_id FROM ev WHERE type = 'exposure' AND NOT forced)
        {FIRST_DELIVERY}
    """, [history_glob, *([experiment, int(phase)] if experiment else [])])


def load_experiment(con: duckdb.DuckDBPyConnection, glob: str | None, exp: ExperimentConfig, cfg: AnalyzerConfig,
                    start: datetime | None = None, end: datetime | None = None,
                    history_glob: str | None = None) -> ExperimentData:
    """Return per-arm sufficient statistics of every KPI of ``exp`` (config metrics and built-ins).

    ``glob`` names the experiment's Parquet files, ``history_glob`` the whole lake (CUPED's
    pre-period data); None reuses the tables of an earlier call.
    """
    if glob is not None:
        prepare_events(con, glob, exp.phase, history_glob, exp.key)
    if not _has_table(con, "unit_facts"):
        _build_unit_facts(con, cfg)
    # A unit belongs to the period of its first exposure over the whole phase: a unit first exposed
    # before the period that returns during it is not a unit of the period.
    in_period, period_ts, params = ["TRUE"], ["TRUE"], []
    for op, bound in ((">=", start), ("<", end)):
        if bound is not None:
            in_period.append(f"first_ts {op} ?")
            period_ts.append(f"ts {op} ?")  # the same bounds on an event's own time
            params.append(bound)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE units AS
        SELECT unit_id, arm, first_ts, requests FROM unit_facts WHERE arms = 1 AND {' AND '.join(in_period)}
    """, params)
    multi = con.execute(f"SELECT count(*) FROM unit_facts WHERE arms > 1 AND {' AND '.join(in_period)}",
                        params).fetchone()[0]
    units = dict(con.execute("SELECT arm, count(*) FROM units GROUP BY arm").fetchall())
    requests = dict(con.execute("SELECT arm, sum(requests) FROM units GROUP BY arm").fetchall())
    forced = con.execute(f"SELECT count(*) FROM ev WHERE type = 'exposure' AND forced AND {' AND '.join(period_ts)}",
                         params).fetchone()[0]
    con.execute("CREATE OR REPLACE TEMP TABLE outc AS SELECT o.* FROM outc_all o SEMI JOIN units u USING (unit_id)")
    early = con.execute("SELECT count(*) FROM outc WHERE early").fetchone()[0]
    late = con.execute("SELECT count(*) FROM outc WHERE NOT attributed AND NOT early").fetchone()[0]
    orphan_rows = dict(con.execute(f"SELECT forced_only, count(*) FROM stray_outcomes WHERE {' AND '.join(period_ts)} "
                                   "GROUP BY 1", params).fetchall())
    orphans, forced_only = orphan_rows.get(False, 0), orphan_rows.get(True, 0)
    con.execute("CREATE OR REPLACE TEMP TABLE resp AS SELECT r.* FROM resp_all r SEMI JOIN units u USING (unit_id)")
    cuped = cfg.cuped.enabled and _has_table(con, "pre_unit")
    with_cost = bool(cfg.prices)
    con.execute("CREATE OR REPLACE TEMP TABLE prices (model VARCHAR, p_in DOUBLE, p_out DOUBLE)")
    if with_cost:
        con.executemany("INSERT INTO prices VALUES (?, ?, ?)",
                        [(m, p.prompt_per_1k, p.completion_per_1k) for m, p in cfg.prices.items()])
    metrics = _merge_metrics(exp.metrics, builtin_metrics(cfg, with_cost))
    stats: dict[str, dict[str, Stats]] = {arm: {} for arm in units}
    skipped: dict[str, str] = {}
    caps: dict[str, float] = {}
    history: dict[str, float] = {}
    for m in metrics:
        if m.name == "cost_per_request" and with_cost:
            unpriced = _unpriced_models(con)
            if unpriced:  # a missing price makes the cost unknown, never zero
                skipped[m.name] = ("no price in analyzer.prices for " + ", ".join(
                    f"{model} ({arm})" for arm, model in unpriced) + ": the cost of that arm is unknown")
                continue
        outcome_metric = m.kind in ("binary", "continuous") or m.numerator is not None  # not a built-in
        if cuped and m.role in ("primary", "secondary") and outcome_metric:
            per_arm, history[m.name] = _adjusted_stats(con, m, caps)
            if history[m.name] == 0:  # nothing to adjust for: the kind's own test (unpooled z, Welch t)
                per_arm = _metric_stats(con, m, caps)
        else:
            per_arm = _metric_stats(con, m, caps)
        missing = [a for a in units if a not in per_arm]
        if missing:
            skipped[m.name] = f"no data in arm(s) {missing}"
            continue
        for arm, s in per_arm.items():
            if arm in stats:
                stats[arm][m.name] = s
    metrics = [m for m in metrics if m.name not in skipped]
    return ExperimentData(exp.key, exp.phase, start, end, units, {a: int(v) for a, v in requests.items()},
                          metrics, stats, int(multi), int(orphans), int(late), int(forced),
                          skipped=skipped, early_outcomes=int(early), forced_only_outcomes=int(forced_only),
                          caps=caps, history_share=history)


def _unpriced_models(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """Return (arm, upstream model) of the period's responses whose model has no price, sorted."""
    return [(arm, model or "(unknown model)") for arm, model in con.execute(
        "SELECT DISTINCT r.arm, r.upstream_model FROM resp r ANTI JOIN prices p ON p.model = r.upstream_model "
        "ORDER BY 1, 2").fetchall()]


def _merge_metrics(configured: list[MetricDefinition], builtin: list[MetricDefinition]) -> list[MetricDefinition]:
    """Config metrics first; a built-in with the same name takes the config's definition (its role...)."""
    names = {m.name for m in configured}
    return [*configured, *(b for b in builtin if b.name not in names)]


def _sample_stats(rows: list[tuple]) -> dict[str, SampleStats]:
    return {arm: SampleStats(int(n), float(s or 0.0), float(ss or 0.0)) for arm, n, s, ss in rows if n}


def _ratio_stats(rows: list[tuple], caps: dict[str, float] | None = None, name: str = "") -> dict[str, RatioStats]:
    for row in rows:
        if caps is not None and row[7] is not None:
            caps[name] = float(row[7])
    return {arm: RatioStats(int(n), float(a), float(b), float(c), float(d), float(e))
            for arm, n, a, b, c, d, e, _cap in rows if n}


_RATIO_AGG = """
    WITH pu AS ({per_unit}), c AS ({cap}),
         pc AS (SELECT arm, CASE WHEN c.cap IS NULL THEN num ELSE least(num, c.cap) END AS num, den FROM pu, c)
    SELECT arm, count(*), sum(num), sum(num * num), sum(den), sum(den * den), sum(num * den), any_value(c.cap)
    FROM pc, c GROUP BY arm
"""


def _cap_sql(m: MetricDefinition, column: str, source: str) -> str:
    """Return a one-row SELECT of a metric's cap over all units' ``column`` of ``source`` (NULL: no cap)."""
    if m.cap is None:
        return "SELECT CAST(NULL AS DOUBLE) AS cap"
    if m.cap.value is not None:
        return f"SELECT CAST({float(m.cap.value)!r} AS DOUBLE) AS cap"
    return f"SELECT quantile_cont({column}, {float(m.cap.quantile):.17g}) AS cap FROM {source}"  # type: ignore[arg-type]


def _metric_stats(con: duckdb.DuckDBPyConnection, m: MetricDefinition,
                  caps: dict[str, float] | None = None) -> dict[str, Stats]:
    """Return per-arm statistics of one metric, by SQL over the temp tables of load_experiment.

    A metric's ``cap`` applies to each unit's value (continuous) or numerator (ratio) before the
    sums, at a value or at a quantile of all units of all arms; the cap used goes into ``caps``.
    """
    name = m.name
    caps = {} if caps is None else caps

    def ratio(per_unit: str) -> dict[str, Stats]:
        rows = con.execute(_RATIO_AGG.format(per_unit=per_unit, cap=_cap_sql(m, "num", "pu"))).fetchall()
        return _ratio_stats(rows, caps, name)  # type: ignore[return-value]

    if m.kind == "quantile" and name.startswith("latency_p"):
        return latency_quantile_stats(con, m.quantile or 0.5)
    if name == "error_rate":
        per_unit = """SELECT arm, unit_id,
            sum(CASE WHEN status_code >= 500 OR error = 'stream_interrupted' THEN 1 ELSE 0 END)::DOUBLE AS num,
            count(*)::DOUBLE AS den FROM resp GROUP BY arm, unit_id"""
        return ratio(per_unit)
    if name == "completion_tokens_per_request":
        per_unit = """SELECT arm, unit_id, coalesce(sum(completion_tokens), 0)::DOUBLE AS num,
            count(*)::DOUBLE AS den FROM resp GROUP BY arm, unit_id"""
        return ratio(per_unit)
    if name == "cost_per_request":
        per_unit = """SELECT r.arm, r.unit_id,
            coalesce(sum(coalesce(r.prompt_tokens, 0) / 1000.0 * p.p_in
                         + coalesce(r.completion_tokens, 0) / 1000.0 * p.p_out), 0) AS num,
            count(*)::DOUBLE AS den FROM resp r LEFT JOIN prices p ON p.model = r.upstream_model
            GROUP BY r.arm, r.unit_id"""
        return ratio(per_unit)
    if m.kind not in ("binary", "continuous") and m.numerator is None:
        return {}
    values, _ = _unit_values(m)
    if m.kind == "binary":
        return _sample_stats(con.execute(f"WITH {values} SELECT arm, count(*), sum(y), sum(y * y) FROM pu GROUP BY arm")
                             .fetchall())
    if m.kind == "continuous":
        # sums of (v - k), k the mean over all units: raw sums of squares of values near 1e6 with a
        # spread of 0.01 lose the variance to cancellation (stats.SampleStats.shift)
        rows = con.execute(f"""
            WITH {values}, k AS (SELECT avg(y) AS k FROM pu)
            SELECT arm, count(*), sum(y - k), sum((y - k) * (y - k)), any_value(k), any_value(cap)
            FROM pu, k GROUP BY arm""").fetchall()
        for row in rows:
            if row[5] is not None:
                caps[name] = float(row[5])
        return {arm: SampleStats(int(n), float(s), float(ss), float(k)) for arm, n, s, ss, k, _ in rows if n}
    rows = con.execute(f"""
        WITH {values}
        SELECT arm, count(*), sum(y), sum(y * y), sum(d), sum(d * d), sum(y * d), any_value(cap)
        FROM pu GROUP BY arm""").fetchall()
    return _ratio_stats(rows, caps, name)  # type: ignore[return-value]


def _build_unit_facts(con: duckdb.DuckDBPyConnection, cfg: AnalyzerConfig) -> None:
    """Build what does not depend on the period, once per set of events (a report's daily analyses
    share it): each unit's first exposure, arm and requests within its attribution window, its
    outcomes and responses flagged or filtered by that window, the stray outcomes, and (CUPED) each
    unit's pre-period values. Every KPI reads only the unit's events within the attribution window
    from its first exposure: its requests (the denominator of per-request ratios), responses and
    outcomes alike.
    """
    window = _interval(cfg.attribution_window_hours * 3600)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE unit_facts AS
        WITH f AS (SELECT unit_id, min(arm) AS arm, count(DISTINCT arm) AS arms, min(ts) AS first_ts
                   FROM ev WHERE type = 'exposure' AND NOT forced AND unit_id IS NOT NULL GROUP BY unit_id)
        SELECT f.unit_id, f.arm, f.arms, f.first_ts, count(*) FILTER (WHERE e.ts <= f.first_ts + {window}) AS requests
        FROM f JOIN ev e ON e.unit_id = f.unit_id AND e.type = 'exposure' AND NOT e.forced
        GROUP BY f.unit_id, f.arm, f.arms, f.first_ts
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE outc_all AS
        SELECT o.unit_id, o.metric, o.value,
               o.ts >= u.first_ts AND o.ts <= u.first_ts + {window} AS attributed,
               o.ts < u.first_ts AS early
        FROM ev o JOIN unit_facts u ON u.unit_id = o.unit_id
        WHERE o.type = 'outcome' AND u.arms = 1
    """)
    # outcomes whose unit has no exposure in the phase: orphans, or forced-only when the unit was only
    # ever served by a forced (QA) request; a period counts those timestamped in it
    con.execute("""
        CREATE OR REPLACE TEMP TABLE stray_outcomes AS
        SELECT o.ts, f.unit_id IS NOT NULL AS forced_only
        FROM ev o LEFT JOIN (SELECT DISTINCT unit_id FROM ev WHERE type = 'exposure' AND forced) f
             ON f.unit_id = o.unit_id
        WHERE o.type = 'outcome' AND o.unit_id NOT IN (SELECT unit_id FROM unit_facts)
    """)
    # per-request facts of the units' responses within the window, with the upstream model for prices
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE resp_all AS
        SELECT u.unit_id, u.arm, r.status_code, r.error, r.latency_ms, r.prompt_tokens, r.completion_tokens,
               x.upstream_model
        FROM ev r JOIN unit_facts u ON u.unit_id = r.unit_id
        LEFT JOIN (SELECT request_id, upstream_model FROM ev WHERE type = 'exposure') x ON x.request_id = r.request_id
        WHERE r.type = 'response' AND NOT r.forced AND u.arms = 1
          AND r.ts >= u.first_ts AND r.ts <= u.first_ts + {window}
    """)
    if not (cfg.cuped.enabled and _has_table(con, "hist")):
        return
    lookback = _interval(cfg.cuped.lookback_days * 86400)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pre_ev AS
        SELECT h.* FROM unit_facts u JOIN hist h ON h.unit_id = u.unit_id
        WHERE h.ts < u.first_ts AND h.ts >= u.first_ts - {lookback}
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE pre_unit AS
        SELECT unit_id, count(*) FILTER (WHERE type = 'exposure') AS requests, count(*) AS events
        FROM pre_ev GROUP BY unit_id
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE pre_outc AS
        SELECT unit_id, metric, max(value) AS mx, avg(value) AS mean, sum(value) AS total
        FROM pre_ev WHERE type = 'outcome' GROUP BY unit_id, metric
    """)


def _interval(seconds: float) -> str:
    """Return an interval literal of ``seconds`` in whole microseconds (one syntax for every engine)."""
    return f"INTERVAL {round(seconds * 1e6):d} MICROSECOND"


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    if isinstance(con, SparkConnection):
        return con.has_table(name)
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0])


def _unit_values(m: MetricDefinition) -> tuple[str, list[str]]:
    """Return CTEs ending in ``pu`` (arm, unit_id, the metric's per-unit columns, capped, and the cap) and
    those columns: ``y`` (a binary's max, a continuous metric's mean, a ratio's numerator), ``d`` (a
    ratio's denominator)."""
    name = _ident(m.name)
    if m.kind == "binary":
        return f"""pu AS (SELECT u.unit_id, u.arm, coalesce(max(o.value) FILTER (WHERE o.attributed), 0)::DOUBLE AS y,
                          CAST(NULL AS DOUBLE) AS cap
                   FROM units u LEFT JOIN outc o ON o.unit_id = u.unit_id AND o.metric = '{name}'
                   GROUP BY u.unit_id, u.arm)""", ["y"]
    if m.kind == "continuous":
        return f"""raw AS (SELECT u.unit_id, u.arm, avg(o.value) AS v FROM units u JOIN outc o ON o.unit_id = u.unit_id
                    WHERE o.metric = '{name}' AND o.attributed GROUP BY u.unit_id, u.arm),
               c AS ({_cap_sql(m, "v", "raw")}),
               pu AS (SELECT unit_id, arm, CASE WHEN c.cap IS NULL THEN v ELSE least(v, c.cap) END AS y, c.cap
                      FROM raw, c)""", ["y"]
    if m.denominator == "requests":
        den = "u.requests::DOUBLE"
    else:
        den = f"coalesce(sum(o.value) FILTER (WHERE o.attributed AND o.metric = '{_ident(m.denominator)}'), 0)"
    return f"""raw AS (SELECT u.arm, u.unit_id,
                  coalesce(sum(o.value) FILTER (WHERE o.attributed AND o.metric = '{_ident(m.numerator)}'), 0) AS num,
                  {den} AS den
                  FROM units u LEFT JOIN outc o ON o.unit_id = u.unit_id GROUP BY u.arm, u.unit_id, u.requests),
               c AS ({_cap_sql(m, "num", "raw")}),
               pu AS (SELECT unit_id, arm, CASE WHEN c.cap IS NULL THEN num ELSE least(num, c.cap) END AS y,
                             den AS d, c.cap FROM raw, c)""", ["y", "d"]


def _covariates(m: MetricDefinition) -> tuple[str, list[str]]:
    """Return the join and the covariate columns of a metric: its pre-period value(s) and "has history".

    A unit without pre-period data gets 0 and h = 0 (the missing-covariate indicator), never a drop.
    binary: active before (any exposure or outcome) and then its max; continuous: the mean of its
    pre-period values; ratio: the pre-period numerator and denominator sums.
    """
    name = _ident(m.name)
    join = (f"LEFT JOIN pre_unit p ON p.unit_id = pu.unit_id "
            f"LEFT JOIN pre_outc q ON q.unit_id = pu.unit_id AND q.metric = '{name}'")
    if m.kind == "binary":
        return join, ["CASE WHEN coalesce(p.events, 0) > 0 THEN coalesce(q.mx, 0) ELSE 0 END AS x",
                      "CASE WHEN coalesce(p.events, 0) > 0 THEN 1.0 ELSE 0.0 END AS h"]
    if m.kind == "continuous":
        return join, ["coalesce(q.mean, 0) AS x", "CASE WHEN q.mean IS NOT NULL THEN 1.0 ELSE 0.0 END AS h"]
    num = _ident(m.numerator)
    join = (f"LEFT JOIN pre_unit p ON p.unit_id = pu.unit_id "
            f"LEFT JOIN pre_outc q ON q.unit_id = pu.unit_id AND q.metric = '{num}'")
    if m.denominator == "requests":
        den, has_den = "coalesce(p.requests, 0)", "coalesce(p.requests, 0) > 0"
    else:
        join += f" LEFT JOIN pre_outc q2 ON q2.unit_id = pu.unit_id AND q2.metric = '{_ident(m.denominator)}'"
        den, has_den = "coalesce(q2.total, 0)", "q2.total IS NOT NULL"
    return join, ["coalesce(q.total, 0)::DOUBLE AS x", f"{den}::DOUBLE AS w",
                  f"CASE WHEN q.total IS NOT NULL OR {has_den} THEN 1.0 ELSE 0.0 END AS h"]


def _adjusted_stats(con: duckdb.DuckDBPyConnection, m: MetricDefinition,
                    caps: dict[str, float]) -> tuple[dict[str, Stats], float]:
    """Return per-arm moment statistics (the metric and its covariates) for CUPED, and the share of
    units with pre-period data. Columns are shifted by their means over all units (stable sums)."""
    values, value_cols = _unit_values(m)
    join, cov_exprs = _covariates(m)
    cols = value_cols + [e.rsplit(" AS ", 1)[1] for e in cov_exprs]
    shifts = ", ".join(f"avg({c}) AS k_{c}" for c in cols)
    sums = [f"sum({c} - k_{c})" for c in cols]
    cross = [f"sum(({a} - k_{a}) * ({b} - k_{b}))" for i, a in enumerate(cols) for b in cols[i:]]
    rows = con.execute(f"""
        WITH {values},
             z AS (SELECT pu.*, {', '.join(cov_exprs)} FROM pu {join}),
             k AS (SELECT {shifts} FROM z)
        SELECT arm, count(*), {', '.join(sums + cross)}, {', '.join(f'any_value(k_{c})' for c in cols)},
               avg(h), any_value(cap)
        FROM z, k GROUP BY arm
    """).fetchall()
    p = len(cols)
    out: dict[str, Stats] = {}
    with_history = total = 0.0
    for row in rows:
        arm, n = row[0], int(row[1])
        if not n:
            continue
        s = [float(v) for v in row[2:2 + p]]
        flat = iter(float(v) for v in row[2 + p:2 + p + p * (p + 1) // 2])
        c = [[0.0] * p for _ in range(p)]
        for i in range(p):
            for j in range(i, p):
                c[i][j] = c[j][i] = next(flat)
        k = [float(v) for v in row[2 + p + p * (p + 1) // 2:2 + 2 * p + p * (p + 1) // 2]]
        share, cap = row[-2], row[-1]
        if cap is not None:
            caps[m.name] = float(cap)
        with_history += float(share) * n
        total += n
        out[arm] = MomentStats(n, tuple(s), tuple(map(tuple, c)), tuple(k), ratio=m.kind == "ratio")
    return out, (with_history / total if total else 0.0)


def _ident(name: str | None) -> str:
    """Return a metric name safe to inline in SQL (config names match [A-Za-z0-9._-]+)."""
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise ValueError(f"invalid metric name {name!r}")
    return name


_TIMED_OK = "status_code = 200 AND latency_ms IS NOT NULL"
"""The responses whose latency the latency quantiles are computed from."""


def latency_quantile_stats(con: duckdb.DuckDBPyConnection, p: float) -> dict[str, QuantileStats]:
    """Return per-arm p-quantiles of successful responses' latency from the ``resp`` table.

    Each carries the design effect of requests clustered in units (``stats.quantile``).
    """
    counts = dict(con.execute(f"SELECT arm, count(*) FROM resp WHERE {_TIMED_OK} GROUP BY arm").fetchall())
    out = {}
    for arm, n in counts.items():
        if n < 2:
            continue
        lo, hi = rank_bounds(int(n), p)
        est, lower, upper = con.execute(
            f"SELECT quantile_cont(latency_ms, [?, ?, ?]) FROM resp WHERE {_TIMED_OK} AND arm = ?",
            [p, lo, hi, arm]).fetchone()[0]
        if any(v is None or math.isnan(v) for v in (est, lower, upper)):
            continue
        # requests cluster in users: per unit, how many of its requests are at or below the estimate
        below = con.execute(
            "SELECT count(*), sum(s), sum(s * s), sum(r), sum(r * r), sum(s * r) FROM ("
            "  SELECT count(*) FILTER (WHERE latency_ms <= ?)::DOUBLE AS s, count(*)::DOUBLE AS r FROM resp"
            f"  WHERE {_TIMED_OK} AND arm = ? GROUP BY unit_id)",
            [est, arm]).fetchone()
        deff = quantile_design_effect(RatioStats(int(below[0]), *map(float, below[1:])))
        out[arm] = QuantileStats(int(n), p, float(est), float(lower), float(upper), design_effect=deff)
    return out

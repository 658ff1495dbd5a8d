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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from splitwatch.stats import MetricDefinition

from ..config import AnalyzerConfig, ExperimentConfig
from ..metric_catalog import PER_REQUEST, builtin_defaults, latency_metric_name
from .activity_statements import activity_definition, censored_sql
from .engines import SparkConnection
from .lake import SCHEMA, analysis_columns, file_columns
from .metric_statements import Stats, adjusted_stats, history_share, metric_stats


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
    # retention metric -> the period's units left out because their window ends after the data does
    censored: dict[str, int] = field(default_factory=dict)
    holdout_units: int = 0  # kept on the control by the long-term holdout (not in the experiment)
    holdout_crossed_units: int = 0  # held out at one time and in the experiment at another: excluded


def builtin_metrics(cfg: AnalyzerConfig, with_cost: bool) -> list[MetricDefinition]:
    """Return the request-level KPIs computed from response events for every experiment (role: diagnostic)."""
    names = [latency_metric_name(q) for q in cfg.latency_quantiles]
    names += [name for name, spec in PER_REQUEST.items() if with_cost or not spec.needs_prices]
    return [MetricDefinition(name=n, role="diagnostic", **builtin_defaults(n)) for n in names]  # type: ignore[arg-type]


def unit_definition(m: MetricDefinition, cfg: AnalyzerConfig) -> str:
    """Return what a metric's value is, unit by unit, as the queries below compute it (the report's vocabulary)."""
    window = f"{cfg.attribution_window_hours:g} h"
    if m.activity is not None:
        return activity_definition(m, window)
    if m.kind == "quantile":
        return (f"p{m.quantile * 100:g} of the upstream latency (ms) of all successful responses of the arm's "  # type: ignore[operator]
                "users; its variance widened for requests clustered in users (design effect)")
    if m.name in PER_REQUEST:
        return (f"per request: {PER_REQUEST[m.name].what} over all the arm's users / their requests (delta method "
                "over users)")
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


HOLDOUT_ARM = "(holdout)"
"""The arm of a unit the long-term holdout kept on the control (``unit_facts``, the holdout's comparison)."""

FIRST_DELIVERY = "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY kafka_partition, kafka_offset) = 1"
"""Keeps one row per ``event_id``: the proxy delivers at least once."""


def drop_derived_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the tables built from ``ev`` and ``hist`` (stale once those are made again)."""
    for derived in ("unit_facts", "hist", "pre_unit", "expo_all"):
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
    # Spark reads every file in the lake's schema (lake.conform); DuckDB reads the files' own columns
    present = [f.name for f in SCHEMA] if isinstance(con, SparkConnection) else file_columns(con, glob)
    # the globs are parameters, never pasted into the SQL: a lake path may hold a quote
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ev AS
        SELECT {analysis_columns(present)} FROM read_parquet(?, union_by_name = true)
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
    if any(m.activity for m in exp.metrics) and not _has_table(con, "expo_all"):
        _build_exposures(con, cfg)
    counts = _period_tables(con, start, end)
    with_cost = bool(cfg.prices)
    con.execute("CREATE OR REPLACE TEMP TABLE prices (model VARCHAR, p_in DOUBLE, p_out DOUBLE)")
    if with_cost:
        con.executemany("INSERT INTO prices VALUES (?, ?, ?)",
                        [(m, p.prompt_per_1k, p.completion_per_1k) for m, p in cfg.prices.items()])
    units = counts.pop("units")
    metrics = _merge_metrics(exp.metrics, builtin_metrics(cfg, with_cost))
    stats: dict[str, dict[str, Stats]] = {arm: {} for arm in units}
    skipped: dict[str, str] = {}
    caps: dict[str, float] = {}
    history: dict[str, float] = {}
    cuped = cfg.cuped.enabled and _has_table(con, "pre_unit")
    censored = {m.name: int(con.execute(censored_sql(m)).fetchone()[0]) for m in metrics if m.activity == "retention"}
    for m in metrics:
        why = _unpriced(con, m) if with_cost else None
        if why:  # a missing price makes the cost unknown, never zero
            skipped[m.name] = why
            continue
        per_arm = _statistics(con, m, cuped, caps, history)
        why = _missing(units, per_arm, censored.get(m.name, 0))
        if why:
            skipped[m.name] = why
            continue
        for arm, s in per_arm.items():
            if arm in stats:
                stats[arm][m.name] = s
    metrics = [m for m in metrics if m.name not in skipped]
    return ExperimentData(exp.key, exp.phase, start, end, units, counts.pop("requests"), metrics, stats,
                          skipped=skipped, caps=caps, history_share=history, censored=censored, **counts)


def _statistics(con: duckdb.DuckDBPyConnection, m: MetricDefinition, cuped: bool, caps: dict[str, float],
                history: dict[str, float]) -> dict[str, Stats]:
    """Return one metric's statistics per arm: CUPED's moments where it applies and some unit has history."""
    if not cuped_applies(m, cuped):
        return metric_stats(con, m, caps)
    per_arm, by_arm = adjusted_stats(con, m, caps)
    history[m.name] = history_share(by_arm)
    if history[m.name] == 0:  # nothing to adjust for: the kind's own test (unpooled z, Welch t)
        return metric_stats(con, m, caps)
    return per_arm


def _missing(units: dict[str, int], per_arm: dict[str, Stats], censored: int) -> str | None:
    """Return why a metric has no statistics in some arm, or None when every arm has them."""
    missing = [a for a in units if a not in per_arm]
    if missing and not per_arm and censored:
        return f"every user's window ends after the data ({censored} left out)"
    return f"no data in arm(s) {missing}" if missing else None


def cuped_applies(m: MetricDefinition, cuped: bool) -> bool:
    """Return True when the metric's effect is adjusted by CUPED (a primary or secondary outcome metric,
    CUPED on and its pre-period tables built)."""
    # outcomes posted by clients, not a built-in (response events) nor an activity metric (exposures)
    outcome_metric = (m.kind in ("binary", "continuous") or m.numerator is not None) and m.activity is None
    return cuped and m.role in ("primary", "secondary") and outcome_metric


def _period_tables(con: duckdb.DuckDBPyConnection, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    """Build the period's tables (``units``, with each unit's first-exposure day from ``start``; ``outc``,
    ``resp``) and return the period's counts: units and requests per arm, and the exclusions."""
    # A unit belongs to the period of its first exposure over the whole phase: a unit first exposed
    # before the period that returns during it is not a unit of the period.
    in_period, period_ts, params = ["TRUE"], ["TRUE"], []
    for op, bound in ((">=", start), ("<", end)):
        if bound is not None:
            in_period.append(f"first_ts {op} ?")
            period_ts.append(f"ts {op} ?")  # the same bounds on an event's own time
            params.append(bound)
    where = " AND ".join(in_period)
    day = "CAST(floor((epoch(first_ts) - ?) / 86400) AS INTEGER)" if start is not None else "0"
    day_params = [start.timestamp()] if start is not None else []
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE units AS
        SELECT unit_id, arm, first_ts, requests, {day} AS day FROM unit_facts WHERE arms = 1 AND held = 0 AND {where}
    """, day_params + params)
    # the long-term holdout's units of the period (docs/holdout.md), and those held out at another time
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE holdout_units AS
        SELECT unit_id, arm, first_ts, requests, {day} AS day FROM unit_facts WHERE arms = 0 AND held = 1 AND {where}
    """, day_params + params)
    multi = con.execute(f"SELECT count(*) FROM unit_facts WHERE arms > 1 AND {where}", params).fetchone()[0]
    crossed = con.execute(f"SELECT count(*) FROM unit_facts WHERE arms = 1 AND held = 1 AND {where}",
                          params).fetchone()[0]
    held = con.execute("SELECT count(*) FROM holdout_units").fetchone()[0]
    units = dict(con.execute("SELECT arm, count(*) FROM units GROUP BY arm").fetchall())
    requests = dict(con.execute("SELECT arm, sum(requests) FROM units GROUP BY arm").fetchall())
    forced = con.execute(f"SELECT count(*) FROM ev WHERE type = 'exposure' AND forced AND {' AND '.join(period_ts)}",
                         params).fetchone()[0]
    restrict_to_units(con)
    early = con.execute("SELECT count(*) FROM outc WHERE early").fetchone()[0]
    late = con.execute("SELECT count(*) FROM outc WHERE NOT attributed AND NOT early").fetchone()[0]
    orphan_rows = dict(con.execute(f"SELECT forced_only, count(*) FROM stray_outcomes WHERE {' AND '.join(period_ts)} "
                                   "GROUP BY 1", params).fetchall())
    # the last instant the data covers (retention's censoring): the period's end, or the newest request
    # before it (a report on a week not over yet); exposures only, stamped by the proxy's clock
    bound = ", ?" if end is not None else ""
    con.execute(f"CREATE OR REPLACE TEMP TABLE horizon AS SELECT least(max(epoch_us(ts)){bound}) AS h FROM ev "
                "WHERE type = 'exposure'", [_epoch_us(end)] if end is not None else [])
    return {"units": units, "requests": {a: int(v) for a, v in requests.items()}, "multi_arm_units": int(multi),
            "orphan_outcomes": int(orphan_rows.get(False, 0)), "late_outcomes": int(late),
            "forced_requests": int(forced), "early_outcomes": int(early),
            "forced_only_outcomes": int(orphan_rows.get(True, 0)), "holdout_units": int(held),
            "holdout_crossed_units": int(crossed)}


@contextmanager
def units_regrouped(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Keep the period's ``units`` as ``units_base`` while the caller rebuilds ``units`` grouped its own way
    (segments, the holdout's comparison, interactions); give the period's units back afterwards."""
    con.execute("CREATE OR REPLACE TEMP TABLE units_base AS SELECT unit_id, arm, first_ts, requests, day FROM units")
    try:
        yield
    finally:
        con.execute("CREATE OR REPLACE TEMP TABLE units AS SELECT * FROM units_base")


def restrict_to_units(con: duckdb.DuckDBPyConnection) -> None:
    """Build ``outc`` and ``resp``, the outcomes and responses of the units in ``units``, each response
    with its unit's arm there (the holdout's comparison groups units under arms of its own)."""
    con.execute("CREATE OR REPLACE TEMP TABLE outc AS SELECT o.* FROM outc_all o SEMI JOIN units u USING (unit_id)")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE resp AS
        SELECT r.unit_id, u.arm, r.status_code, r.error, r.latency_ms, r.prompt_tokens, r.completion_tokens,
               r.upstream_model
        FROM resp_all r JOIN units u ON u.unit_id = r.unit_id""")


def _unpriced(con: duckdb.DuckDBPyConnection, m: MetricDefinition) -> str | None:
    """Return why a priced metric cannot be computed (a model without a price), or None."""
    spec = PER_REQUEST.get(m.name)
    if spec is None or not spec.needs_prices:
        return None
    unpriced = _unpriced_models(con)
    if not unpriced:
        return None
    return ("no price in analyzer.prices for " + ", ".join(f"{model} ({arm})" for arm, model in unpriced)
            + ": the cost of that arm is unknown")


def _unpriced_models(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """Return (arm, upstream model) of the period's responses whose model has no price, sorted."""
    return [(arm, model or "(unknown model)") for arm, model in con.execute(
        "SELECT DISTINCT r.arm, r.upstream_model FROM resp r ANTI JOIN prices p ON p.model = r.upstream_model "
        "ORDER BY 1, 2").fetchall()]


def _merge_metrics(configured: list[MetricDefinition], builtin: list[MetricDefinition]) -> list[MetricDefinition]:
    """Config metrics first; a built-in with the same name takes the config's definition (its role...)."""
    names = {m.name for m in configured}
    return [*configured, *(b for b in builtin if b.name not in names)]


def _build_unit_facts(con: duckdb.DuckDBPyConnection, cfg: AnalyzerConfig) -> None:
    """Build what does not depend on the period, once per set of events (a report's daily analyses
    share it): each unit's first exposure, arm and requests within its attribution window, its
    outcomes and responses flagged or filtered by that window, the stray outcomes, and (CUPED) each
    unit's pre-period values. Every KPI reads only the unit's events within the attribution window
    from its first exposure: its requests (the denominator of per-request ratios), responses and
    outcomes alike.
    """
    window = _interval(cfg.attribution_window_hours * 3600)
    # arm and arms count the experiment's arms only; a unit the long-term holdout kept on the control has
    # arm '(holdout)' and arms 0 (held = 1), one held out and in the experiment at other times arms >= 1
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE unit_facts AS
        WITH f AS (SELECT unit_id,
                          coalesce(min(arm) FILTER (WHERE NOT coalesce(holdout, FALSE)), '{HOLDOUT_ARM}') AS arm,
                          count(DISTINCT arm) FILTER (WHERE NOT coalesce(holdout, FALSE)) AS arms,
                          max(CASE WHEN coalesce(holdout, FALSE) THEN 1 ELSE 0 END) AS held, min(ts) AS first_ts
                   FROM ev WHERE type = 'exposure' AND NOT forced AND unit_id IS NOT NULL GROUP BY unit_id)
        SELECT f.unit_id, f.arm, f.arms, f.held, f.first_ts,
               count(*) FILTER (WHERE e.ts <= f.first_ts + {window}) AS requests
        FROM f JOIN ev e ON e.unit_id = f.unit_id AND e.type = 'exposure' AND NOT e.forced
        GROUP BY f.unit_id, f.arm, f.arms, f.held, f.first_ts
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE outc_all AS
        SELECT o.unit_id, o.metric, o.value,
               o.ts >= u.first_ts AND o.ts <= u.first_ts + {window} AS attributed,
               o.ts < u.first_ts AS early
        FROM ev o JOIN unit_facts u ON u.unit_id = o.unit_id
        WHERE o.type = 'outcome' AND u.arms <= 1
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
        WHERE r.type = 'response' AND NOT r.forced AND u.arms <= 1
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


def _build_exposures(con: duckdb.DuckDBPyConnection, cfg: AnalyzerConfig) -> None:
    """Build ``expo_all``, what the activity metrics read: every non-forced exposure of the phase's units
    (seen in one arm), its offset from the unit's first exposure in whole microseconds, whether it is
    within the attribution window (as the unit's ``requests`` count it), and the request's user turns."""
    window_us = round(cfg.attribution_window_hours * 3600 * 1_000_000)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE expo_all AS
        SELECT e.unit_id, e.event_id, epoch_us(e.ts) - epoch_us(u.first_ts) AS since_us,
               epoch_us(e.ts) - epoch_us(u.first_ts) <= {window_us} AS in_window, e.user_turns
        FROM ev e JOIN unit_facts u ON u.unit_id = e.unit_id
        WHERE e.type = 'exposure' AND NOT e.forced AND u.arms <= 1
    """)


def _epoch_us(t: datetime) -> int:
    """Return a time as whole microseconds since 1970 (exact: no float)."""
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _interval(seconds: float) -> str:
    """Return an interval literal of ``seconds`` in whole microseconds (one syntax for every engine)."""
    return f"INTERVAL {round(seconds * 1e6):d} MICROSECOND"


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    if isinstance(con, SparkConnection):
        return con.has_table(name)
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0])

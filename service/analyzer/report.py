"""``splitwatch report``: the weekly KPI significance report, as Markdown, self-contained HTML or JSON."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import duckdb
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from splitwatch.stats import ExperimentResult, SegmentFinding, StateInForce, Verdict, decide, with_state
from splitwatch.stats.verdict import CONFIGURED_PAUSE

from ..config import AnalyzerConfig, Config, ExperimentConfig
from ..serving.summary import ServingSummary, serving_summary
from .analysis import analyze_data
from .daily_series import Series, SeriesPoint, daily_series, looks_before, units_by_day
from .engines import attach_lake, connect
from .holdout import HoldoutComparison, compare_holdout
from .interactions import InteractionResult, interactions
from .kpi_queries import ExperimentData, load_experiment, prepare_events
from .lake import Lake
from .report_queries import answers, drift_events, first_exposure, timeline
from .rollups import Rollups
from .segments import SegmentAnalysis, analyze_segments
from .shadow_stats import shadow_summaries

__all__ = ["Report", "SeriesPoint", "build_report", "exposure_days", "last_full_iso_week", "state_in_force",
           "verdict"]


def last_full_iso_week(today: date | None = None) -> tuple[date, date]:
    """Return (Monday, Sunday) of the last complete ISO week before ``today``."""
    today = today or datetime.now(UTC).date()
    this_monday = today - timedelta(days=today.weekday())
    return this_monday - timedelta(days=7), this_monday - timedelta(days=1)

def exposure_days(cfg: Config, key: str) -> tuple[date, date] | None:
    """Return the first and last day with exposures of the experiment's current phase, or None (no data)."""
    exp = cfg.experiment(key)
    lake = Lake(cfg.analyzer.lake_dir)
    if exp is None or not lake.has_files(key):
        return None
    if cfg.analyzer.rollups:  # the rollups' index knows every unit's first exposure
        rollups = Rollups(lake, exp, cfg.analyzer)
        rollups.refresh()
        return rollups.first_exposures()
    con = duckdb.connect()
    attach_lake(con, lake)
    try:
        first, last = con.execute(
            "SELECT min(ts), max(ts) FROM read_parquet(?, union_by_name = true) "
            "WHERE type = 'exposure' AND phase = ? AND NOT coalesce(forced, false)", [lake.glob(key), exp.phase]
        ).fetchone()
    finally:
        con.close()
    return None if first is None else (first.astimezone(UTC).date(), last.astimezone(UTC).date())

def _day_start(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)

@dataclass
class Report:
    """Everything the report shows, independent of its format."""

    experiment: ExperimentConfig
    start: date
    end: date
    data: ExperimentData
    result: ExperimentResult | None
    sequential: bool
    series: Series = field(default_factory=dict)
    verdict: Verdict | None = None
    analyzer: AnalyzerConfig = field(default_factory=AnalyzerConfig)
    drift: list[dict[str, Any]] = field(default_factory=list)  # drift events of the period, in time order
    # each arm's answers per day (output drift): responses, median tokens, refusal/empty/truncated shares
    answers: list[dict[str, Any]] = field(default_factory=list)
    # the phase's state changes (ramp steps, pauses, resumes) up to the period's end, in order
    timeline: list[dict[str, Any]] = field(default_factory=list)
    # shadow traffic: each candidate's paired figures against the control (shadow_stats)
    shadow: list[dict[str, Any]] = field(default_factory=list)
    segments: SegmentAnalysis | None = None  # results by segment (analyzer.segments)
    holdout: HoldoutComparison | None = None  # the long-term holdout against everyone exposed (config holdout)
    # arm x arm interactions with the other experiments that took some of the period's units
    interactions: list[InteractionResult] = field(default_factory=list)
    serving: ServingSummary | None = None  # the model servers' own metrics per arm (analyzer.prometheus)

@contextmanager
def _steps(label: str, total: int, shown: bool) -> Iterator[Any]:
    """Yield a function that marks one step of the report done, shown as a progress bar on a terminal."""
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[step]}"),
                  TimeElapsedColumn(), console=console, disable=not (shown and console.is_terminal)) as bar:
        task = bar.add_task(label, total=total, step="")

        def done(step: str) -> None:
            bar.update(task, advance=1, step=step)

        yield done


def build_report(cfg: Config, key: str, start: date, end: date, sequential: bool = True,
                 progress: bool = True) -> Report:
    """Return the report of experiment ``key`` for units first exposed from ``start`` to ``end`` (inclusive).

    The KPI SQL runs on ``cfg.analyzer.engine`` (DuckDB, or Spark with ``cfg.analyzer.spark``), once for
    the period and once, grouped by day, for the daily series (:mod:`.daily_series`): one analysis of
    the lake per report, however many days it covers."""
    exp = cfg.require_experiment(key)
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    lake = Lake(cfg.analyzer.lake_dir)
    rollups = Rollups(lake, exp, cfg.analyzer) if cfg.analyzer.rollups else None
    spark = cfg.analyzer.spark
    period = (_day_start(start), _day_start(end + timedelta(days=1)))
    days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    with _steps(f"report {key}", 9, progress) as step:
        if rollups is not None:
            rollups.refresh()  # what changed since the last refresh (docs/analyzer.md, "Daily rollups")
        con = connect(cfg.analyzer.engine, spark.master, spark.conf)
        attach_lake(con, lake)
        try:
            if rollups is not None:  # the period's files and its units' rollups, not the whole lake
                rollups.prepare(con, *period)
                files: str | list[str] = rollups.period_files(*period)
            else:
                prepare_events(con, lake.glob(key), exp.phase,
                               lake.glob("*") if cfg.analyzer.cuped.enabled else None, key)
                files = lake.glob(key)
            step("events")
            rep = Report(exp, start, end, load_experiment(con, None, exp, cfg.analyzer, *period), None, sequential,
                         drift=drift_events(con, *period), analyzer=cfg.analyzer, timeline=timeline(con, period[1]),
                         answers=answers(con, *period))
            step("statistics")
            rep.shadow = shadow_summaries(con, *period, cfg.analyzer.alpha, files)
            step("shadow traffic")
            units = units_by_day(con, len(days))  # a group design's looks: the units at the end of each day
            rep.result = analyze_data(rep.data, exp, cfg.analyzer, sequential, looks_before(units))
            step("analysis")
            rep.series = daily_series(con, rep.data, rep.result, exp, cfg.analyzer, sequential, days, units)
            step("daily series")
            if rep.result.results:
                rep.segments = analyze_segments(con, rep.data, exp, cfg.analyzer, rep.result.options)
            step("segments")
            rep.holdout = compare_holdout(con, rep.data, exp, cfg.analyzer, cfg.holdout, rep.result.options, *period)
            step("holdout")
            rep.interactions = interactions(con, rep.data, exp, cfg, lake, rep.result.options)
            step("interactions")
            first = first_exposure(con)
        finally:
            con.close()
        # the serving side from the period's first exposure (before it, the servers served no arm) to its end
        served_from = max(period[0], first) if first is not None else period[0]
        rep.serving = serving_summary(cfg.analyzer.prometheus, exp, served_from, min(period[1], datetime.now(UTC)))
        step("serving")
    rep.verdict = verdict(rep)
    return rep


def state_in_force(rep: Report) -> StateInForce | None:
    """Return the phase's state at the period's end (its last control event), or None (never changed)."""
    if not rep.timeline:
        return CONFIGURED_PAUSE if rep.experiment.status == "paused" else None
    last = rep.timeline[-1]
    return StateInForce(last["status"], last["actor"], last["ts"], last["reason"], last["by"], last["evidence"])

def verdict(rep: Report) -> Verdict:
    """Return the verdict (ship, keep running, roll back, invalid) of the report's analysis, as it stands
    given the state in force (a rollback by the guard reads roll_back, done; stats.with_state)."""
    d, res = rep.data, rep.result
    assert res is not None
    days = max(1, (rep.end - rep.start).days + 1)
    total = sum(d.units.values())
    seg = rep.segments
    found = [] if seg is None else [
        SegmentFinding(r.dimension, r.value, r.metric, r.arm, r.role, r.effect or 0.0, r.p_adjusted or 0.0,
                       r.control_units + r.treatment_units) for r in seg.findings()]
    return with_state(decide(res, d.metrics, {a.name: d.units.get(a.name, 0) for a in rep.experiment.arms},
                             {a.name: a.weight for a in rep.experiment.arms}, rep.experiment.control.name,
                             units_per_day=total / days if total else None, multi_arm_units=d.multi_arm_units,
                             segments=found, segments_decide=seg is not None and seg.affect_verdict),
                      state_in_force(rep))

"""The report's daily series: each metric's cumulative effect at the end of every day of the period, from
one pass of per-day sufficient statistics, summed day by day (never one query of the lake per day).

The period's tables (:func:`.kpi_queries.load_experiment`) give each unit its first-exposure day;
every metric's statistics are grouped by arm and that day in one statement, and day d's point is the
engine's analysis of the sums of days 0..d (latency quantiles, which do not add up, come cumulative
from their own statement). Differences from analysing each day's units alone, both deliberate: a cap
at a quantile is the period's cap on every day (the metric's definition does not move along the
plot), and sums are shifted by the period's means (exact algebra). The last point is the report's own
analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from splitwatch.stats import ExperimentResult, MetricDefinition, MomentStats, RatioStats, SampleStats

from ..config import AnalyzerConfig, ExperimentConfig
from .analysis import analyze_data
from .kpi_queries import ExperimentData
from .metric_statements import (
    Stats,
    adjusted_stats,
    daily_latency_quantiles,
    metric_stats,
)


@dataclass
class SeriesPoint:
    """A metric's cumulative relative effect at the end of one day."""

    day: str
    relative: float | None
    low: float | None
    high: float | None


Series = dict[tuple[str, str], list[SeriesPoint]]


def _plain(m: MetricDefinition, s: MomentStats) -> Stats:
    """Return a CUPED metric's unadjusted statistics from its moments (the metric's own columns)."""
    if m.kind == "continuous":
        return SampleStats(s.n, s.sums[0], s.cross[0][0], s.shift[0])
    z = s.shifted((0.0,) * len(s.sums))
    if m.kind == "binary":
        return SampleStats(z.n, z.sums[0], z.cross[0][0])
    return RatioStats(z.n, z.sums[0], z.cross[0][0], z.sums[1], z.cross[1][1], z.cross[0][1])


class _Cumulative:
    """Running sums of one metric's per-day statistics, per arm."""

    def __init__(self, metric: MetricDefinition, by_day: dict[tuple[str, int], Any],
                 history: dict[tuple[str, int], tuple[float, int]] | None, quantile: bool):
        self.metric, self.by_day, self.history, self.quantile = metric, by_day, history, quantile
        self.total: dict[str, Any] = {}
        self.with_history = 0.0

    def add_day(self, day: int) -> None:
        """Add day ``day``'s statistics (a quantile's cumulative statistics replace the previous day's)."""
        for (arm, d), s in self.by_day.items():
            if d != day:
                continue
            self.total[arm] = s if self.quantile or arm not in self.total else self.total[arm] + s
            if self.history is not None:
                self.with_history += self.history[(arm, d)][0]

    def stats(self) -> dict[str, Stats]:
        """Return each arm's statistics so far (unadjusted while no unit so far has pre-period data)."""
        if self.history is not None and self.with_history == 0:
            return {arm: _plain(self.metric, s) for arm, s in self.total.items()}
        return dict(self.total)


def _per_day(con: Any, data: ExperimentData) -> list[_Cumulative]:
    """Return every analysed metric's per-day statistics, one statement per metric."""
    out = []
    for m in data.metrics:
        if m.kind == "quantile":
            out.append(_Cumulative(m, daily_latency_quantiles(con, m.quantile or 0.5), None, True))
        elif data.history_share.get(m.name, 0) > 0:  # adjusted in the report's analysis
            stats, history = adjusted_stats(con, m, {}, by="day")
            out.append(_Cumulative(m, stats, history, False))
        else:
            out.append(_Cumulative(m, metric_stats(con, m, {}, by="day"), None, False))
    return out


def units_by_day(con: Any, days: int) -> list[dict[str, int]]:
    """Return the units per arm first exposed up to the end of each of the period's ``days`` days."""
    new = con.execute("SELECT arm, day, count(*) FROM units GROUP BY arm, day").fetchall()
    out, running = [], dict.fromkeys(sorted({arm for arm, _, _ in new}), 0)
    for day in range(days):
        for arm, d, n in new:
            if d == day:
                running[arm] += int(n)
        out.append({a: n for a, n in running.items() if n})
    return out


def looks_before(units: list[dict[str, int]]) -> tuple[int, ...]:
    """Return the units (all arms) at the end of each day before the last: a group design's earlier looks."""
    return tuple(sum(u.values()) for u in units[:-1])


def daily_series(con: Any, data: ExperimentData, result: ExperimentResult, exp: ExperimentConfig,
                 cfg: AnalyzerConfig, sequential: bool, days: list[str], units: list[dict[str, int]]) -> Series:
    """Return the series of every metric and arm over ``days`` (ISO dates, the period's).

    ``data`` and ``result`` are the report's analysis of the whole period, its last point; ``units``
    the units per arm at the end of each day (:func:`units_by_day`).
    """
    looks = looks_before(units)
    running = _per_day(con, data) if len(days) > 1 else []
    series: Series = {}
    for i, day in enumerate(days):
        for c in running:
            c.add_day(i)
        if i == len(days) - 1:
            day_result = result
        else:
            stats: dict[str, dict[str, Stats]] = {arm: {} for arm in units[i]}
            for c in running:
                per_arm = c.stats()
                if all(arm in per_arm for arm in units[i]):
                    for arm in units[i]:
                        stats[arm][c.metric.name] = per_arm[arm]
            metrics = [m for m in data.metrics if all(m.name in s for s in stats.values())]
            day_data = replace(data, units=units[i], metrics=metrics, stats=stats)
            day_result = analyze_data(day_data, exp, cfg, sequential, looks[:i])
        for r in day_result.results:
            series.setdefault((r.metric, r.arm), []).append(SeriesPoint(
                day, r.effect.relative, *(r.effect.relative_ci or (None, None))))
    return series

"""Statistics of the lake -> the stats engine -> results and Prometheus gauges."""

from __future__ import annotations

import contextlib
import math
import re

from prometheus_client import Gauge

from splitwatch.stats import (
    AnalysisOptions,
    ExperimentResult,
    StateInForce,
    analyze,
    check_srm,
    decide,
    with_state,
)
from splitwatch.stats.group_sequential import GroupDesign

from .. import metrics
from ..config import AnalyzerConfig, ExperimentConfig
from .kpi_queries import ExperimentData
from .segments import SegmentAnalysis


def n_star_of(exp: ExperimentConfig, cfg: AnalyzerConfig) -> int:
    """Return the mixture's n_star for an experiment: its plan's own, else its planned units, else the
    analyzer's ``sequential_n_star`` (docs/stats.md, "Tuning to the plan")."""
    if exp.plan is None:
        return cfg.sequential_n_star
    return exp.plan.n_star or exp.plan.planned_units


def group_design(exp: ExperimentConfig, cfg: AnalyzerConfig) -> GroupDesign | None:
    """Return the experiment's group-sequential design when the analyzer uses one, else None."""
    if cfg.sequential != "group" or exp.plan is None:
        return None
    return GroupDesign(exp.plan.planned_units, exp.plan.planned_looks, exp.plan.spending)


def analysis_options(cfg: AnalyzerConfig, sequential: bool, exp: ExperimentConfig | None = None,
                     earlier_looks: tuple[int, ...] = ()) -> AnalysisOptions:
    """Return the engine's options for the analyzer's config (sequential: always-valid tests and SRM),
    tuned to the experiment's plan when it has one; ``earlier_looks``: the units at the looks already
    taken (a group design's report)."""
    return AnalysisOptions(alpha=cfg.alpha, correction=cfg.correction, sequential=sequential,
                           n_star=cfg.sequential_n_star if exp is None else n_star_of(exp, cfg),
                           srm_sequential=sequential, decision_scale=cfg.decision_scale,
                           guardrail_alpha=cfg.guardrail_alpha, min_units_per_arm=cfg.min_units_per_arm,
                           group=None if exp is None else group_design(exp, cfg), earlier_looks=earlier_looks)


def analyze_data(data: ExperimentData, exp: ExperimentConfig, cfg: AnalyzerConfig,
                 sequential: bool, earlier_looks: tuple[int, ...] = ()) -> ExperimentResult:
    """Return the engine's result for the experiment's data.

    While an arm has fewer than 2 units no metric can be tested, but the sample ratio checks still
    run: an arm that gets no units is a broken assignment, not a reason to wait.
    """
    arms = [a.name for a in exp.arms]
    options = analysis_options(cfg, sequential, exp, earlier_looks)
    units = {a: data.units.get(a, 0) for a in arms}
    weights = {a.name: a.weight for a in exp.arms}
    if any(units[a] < 2 for a in arms):
        srm, tests = check_srm(units, weights, options)
        return ExperimentResult([], srm, options, {"every metric": "an arm has fewer than 2 units"}, tests)
    return analyze(data.metrics, {a: data.stats[a] for a in arms}, control=exp.control.name,
                   weights=weights, units=units, options=options)


# Label sets exported at the previous analysis, per experiment: series not refreshed this time (a
# metric became untestable, an arm went away) are removed rather than left showing stale values.
_exported: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}


VERDICT_CODES = {"ship": 2, "keep_running": 1, "roll_back": 0, "invalid": -1}


def live_verdict(data: ExperimentData, exp: ExperimentConfig, result: ExperimentResult,
                 state: StateInForce | None = None) -> str:
    """Return the verdict's decision on the live analysis (ship, keep_running, roll_back, invalid), as it
    stands given the state in force (paused by the guard: roll_back, as the report says)."""
    return with_state(decide(result, data.metrics, {a.name: data.units.get(a.name, 0) for a in exp.arms},
                             {a.name: a.weight for a in exp.arms}, exp.control.name,
                             multi_arm_units=data.multi_arm_units), state).decision


def clear_gauges() -> None:
    """Remove every experiment's series (an analyzer replica that stopped leading exports none)."""
    for key in list(_exported):
        for gauge, labels in _exported.pop(key):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)


def _segment_series(key: str, segments: SegmentAnalysis | None) -> list[tuple[Gauge, tuple[str, ...], float]]:
    """Return the segment gauges' series of one experiment: units per segment and arm, and each tested
    segment's effect (a guardrail's harm) and adjusted p-value."""
    if segments is None:
        return []
    out: list[tuple[Gauge, tuple[str, ...], float]] = [
        (metrics.SEGMENT_UNITS, (key, arm, dim, value), n)
        for dim, values in segments.units.items() for value, per_arm in values.items() for arm, n in per_arm.items()]
    for r in segments.results:
        if r.status == "tested" and r.effect is not None and math.isfinite(r.effect) and r.p_adjusted is not None:
            labels = (key, r.arm, r.metric, r.dimension, r.value)
            out += [(metrics.SEGMENT_EFFECT, labels, r.effect), (metrics.SEGMENT_P_VALUE, labels, r.p_adjusted)]
    return out


def _result_series(key: str, result: ExperimentResult) -> list[tuple[Gauge, tuple[str, ...], float]]:
    """Return the series of one experiment's analysis: the SRM p-value, each metric's arm values, relative
    effect with its interval, p-value, and each guardrail's breach."""
    out: list[tuple[Gauge, tuple[str, ...], float]] = []
    if result.srm is not None:
        # an arm without units (or units in an arm of weight 0) is a mismatch whatever the test says
        counts_fail = any(t.method == "arm_counts" and t.mismatch for t in result.srm_tests)
        out.append((metrics.SRM_P_VALUE, (key,), 0.0 if counts_fail else result.srm.p_value))
    breached: dict[str, bool] = {}
    for r in result.results:
        out += [(metrics.METRIC_MEAN, (key, r.control.arm, r.metric), r.control.estimate),
                (metrics.METRIC_MEAN, (key, r.arm, r.metric), r.treatment.estimate)]
        if r.effect.relative is not None and math.isfinite(r.effect.relative):
            out.append((metrics.EFFECT_RELATIVE, (key, r.arm, r.metric), r.effect.relative))
            ci = r.effect.relative_ci
            if ci is not None and all(math.isfinite(v) for v in ci):
                out += [(metrics.EFFECT_RELATIVE_LOWER, (key, r.arm, r.metric), ci[0]),
                        (metrics.EFFECT_RELATIVE_UPPER, (key, r.arm, r.metric), ci[1])]
        out.append((metrics.P_VALUE, (key, r.arm, r.metric, re.split(r"[(;]", r.method)[0]), r.p_value_adjusted))
        if r.guardrail is not None:
            breached[r.metric] = breached.get(r.metric, False) or r.guardrail.status == "breached"
    out += [(metrics.GUARDRAIL_BREACHED, (key, metric), 1 if b else 0) for metric, b in breached.items()]
    return out


def export_gauges(data: ExperimentData, result: ExperimentResult | None, verdict: str | None = None,
                  segments: SegmentAnalysis | None = None) -> None:
    """Set the analyzer's gauges for one experiment (and its segments), and remove its series that went stale."""
    key = data.experiment
    series = [(metrics.UNITS, (key, arm), float(n)) for arm, n in data.units.items()]
    if result is not None:
        series += _result_series(key, result)
    if verdict is not None:
        series.append((metrics.VERDICT, (key,), VERDICT_CODES[verdict]))
    series += _segment_series(key, segments)
    now: set[tuple[Gauge, tuple[str, ...]]] = set()
    for gauge, labels, value in series:
        gauge.labels(*labels).set(value)
        now.add((gauge, labels))
    for gauge, labels in _exported.get(key, set()) - now:
        gauge.remove(*labels)
    _exported[key] = now

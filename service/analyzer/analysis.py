"""Statistics of the lake -> the stats engine -> results and Prometheus gauges."""

from __future__ import annotations

import math
import re

from prometheus_client import Gauge

from splitwatch.stats import AnalysisOptions, ExperimentResult, analyze

from .. import metrics
from ..config import AnalyzerConfig, ExperimentConfig
from .kpi_queries import ExperimentData


def analyze_data(data: ExperimentData, exp: ExperimentConfig, cfg: AnalyzerConfig,
                 sequential: bool) -> ExperimentResult | None:
    """Return the engine's result for the experiment's data, or None when an arm has no units yet."""
    arms = [a.name for a in exp.arms]
    if any(data.units.get(a, 0) < 2 for a in arms):
        return None
    options = AnalysisOptions(alpha=cfg.alpha, correction=cfg.correction, sequential=sequential,
                              n_star=cfg.sequential_n_star, srm_sequential=sequential)
    return analyze(data.metrics, {a: data.stats[a] for a in arms}, control=exp.control.name,
                   weights={a.name: a.weight for a in exp.arms}, units={a: data.units.get(a, 0) for a in arms},
                   options=options)


# Label sets exported at the previous analysis, per experiment: series not refreshed this time (a
# metric became untestable, an arm went away) are removed rather than left showing stale values.
_exported: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}


def export_gauges(data: ExperimentData, result: ExperimentResult | None) -> None:
    """Set the analyzer's gauges for one experiment, and remove its series that went stale."""
    key = data.experiment
    now: set[tuple[Gauge, tuple[str, ...]]] = set()

    def put(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
        gauge.labels(*labels).set(value)
        now.add((gauge, labels))

    for arm, n in data.units.items():
        put(metrics.UNITS, (key, arm), n)
    if result is not None:
        if result.srm is not None:
            put(metrics.SRM_P_VALUE, (key,), result.srm.p_value)
        breached: dict[str, bool] = {}
        for r in result.results:
            put(metrics.METRIC_MEAN, (key, r.control.arm, r.metric), r.control.estimate)
            put(metrics.METRIC_MEAN, (key, r.arm, r.metric), r.treatment.estimate)
            if r.effect.relative is not None and math.isfinite(r.effect.relative):
                put(metrics.EFFECT_RELATIVE, (key, r.arm, r.metric), r.effect.relative)
            put(metrics.P_VALUE, (key, r.arm, r.metric, re.split(r"[(;]", r.method)[0]), r.p_value_adjusted)
            if r.guardrail is not None:
                breached[r.metric] = breached.get(r.metric, False) or r.guardrail.status == "breached"
        for metric, b in breached.items():
            put(metrics.GUARDRAIL_BREACHED, (key, metric), 1 if b else 0)
    for gauge, labels in _exported.get(key, set()) - now:
        gauge.remove(*labels)
    _exported[key] = now

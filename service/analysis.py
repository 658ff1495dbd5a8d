"""Statistics of the lake -> the stats engine -> results and Prometheus gauges."""

from __future__ import annotations

import math

from stats import AnalysisOptions, ExperimentResult, analyze

from . import metrics
from .config import AnalyzerConfig, ExperimentConfig
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


def export_gauges(data: ExperimentData, result: ExperimentResult | None) -> None:
    """Set the analyzer's gauges for one experiment."""
    key = data.experiment
    for arm, n in data.units.items():
        metrics.UNITS.labels(key, arm).set(n)
    if result is None:
        return
    if result.srm is not None:
        metrics.SRM_P_VALUE.labels(key).set(result.srm.p_value)
    breached: dict[str, bool] = {}
    for r in result.results:
        metrics.METRIC_MEAN.labels(key, r.control.arm, r.metric).set(r.control.estimate)
        metrics.METRIC_MEAN.labels(key, r.arm, r.metric).set(r.treatment.estimate)
        if r.effect.relative is not None and math.isfinite(r.effect.relative):
            metrics.EFFECT_RELATIVE.labels(key, r.arm, r.metric).set(r.effect.relative)
        method = r.method.split("(")[0]
        metrics.P_VALUE.labels(key, r.arm, r.metric, method).set(r.p_value_adjusted)
        if r.guardrail is not None:
            breached[r.metric] = breached.get(r.metric, False) or r.guardrail.status == "breached"
    for metric, b in breached.items():
        metrics.GUARDRAIL_BREACHED.labels(key, metric).set(1 if b else 0)

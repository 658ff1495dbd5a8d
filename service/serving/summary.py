"""The serving side of one experiment over a period: each measure's mean and maximum per arm, the
candidates' ratio to the control, and each arm's model size (the report's Serving section)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from ..config import ExperimentConfig, PrometheusConfig
from .model_size import ModelSize, model_size
from .prometheus_api import PrometheusUnavailable, query_range, step_for
from .promql import SERIES, ServingSeries


@dataclass(frozen=True)
class ArmFigures:
    """One measure of one arm over the period."""

    arm: str
    mean: float
    max: float
    points: int
    ratio_to_control: float | None  # the arm's mean over the control's (None for the control, or a zero mean)


@dataclass(frozen=True)
class MeasureFigures:
    """One measure over the period, per arm (empty when no server exported it)."""

    series: ServingSeries
    arms: list[ArmFigures]


@dataclass
class ServingSummary:
    """The Serving section: ``why`` says why there are no figures (nothing configured, Prometheus down)."""

    start: datetime
    end: datetime
    step_s: float = 0.0
    prometheus: str | None = None
    why: str | None = None
    measures: list[MeasureFigures] = field(default_factory=list)
    sizes: dict[str, ModelSize] = field(default_factory=dict)  # by arm
    size_problems: dict[str, str] = field(default_factory=dict)  # by arm: why the server was not asked


def _figures(points: list[tuple[float, float]]) -> tuple[float, float, int] | None:
    values = [v for _, v in points if math.isfinite(v)]
    return (sum(values) / len(values), max(values), len(values)) if values else None


def measure(series: ServingSeries, cfg: PrometheusConfig, exp: ExperimentConfig, start: datetime, end: datetime,
            client: httpx.Client | None = None) -> MeasureFigures:
    """Return one measure's figures per arm of ``exp`` (mean and max of the per-arm series over the period)."""
    expr = series.expr(f'experiment="{exp.key}"', cfg.rate_window)
    by_arm = {s.labels.get("arm", ""): _figures(s.points) for s in query_range(cfg, expr, start, end, client)}
    control = by_arm.get(exp.control.name)
    out = []
    for arm in exp.arms:
        figures = by_arm.get(arm.name)
        if figures is None:
            continue
        mean, top, n = figures
        ratio = None
        if arm.name != exp.control.name and control is not None and control[0] != 0:
            ratio = mean / control[0]
        out.append(ArmFigures(arm.name, mean, top, n, ratio))
    return MeasureFigures(series, out)


def serving_summary(cfg: PrometheusConfig | None, exp: ExperimentConfig, start: datetime, end: datetime,
                    ask_servers: bool = True) -> ServingSummary:
    """Return the experiment's Serving section over [start, end] (``ask_servers``: read the model size from
    each upstream's /v1/models where the config does not state it all)."""
    summary = ServingSummary(start, end)
    for arm in exp.arms:
        if ask_servers:
            size, problem = model_size(arm.upstream)
        else:
            size, problem = ModelSize(arm.upstream.model), None
        summary.sizes[arm.name] = size
        if problem:
            summary.size_problems[arm.name] = problem
    joined = [a.name for a in exp.arms if a.upstream.serving is not None
              and (a.upstream.serving.targets or a.upstream.serving.gpus)]
    if cfg is None:
        summary.why = ("not read: analyzer.prometheus.url is not set (the Prometheus that scrapes the model servers "
                       "and the proxy)")
        return summary
    summary.prometheus = cfg.url
    if not joined:
        summary.why = ("not read: no arm names its model servers' scrape targets or GPUs "
                       "(experiments[].arms[].upstream.serving)")
        return summary
    summary.step_s = step_for(cfg, start, end)
    try:
        with httpx.Client() as client:
            summary.measures = [measure(s, cfg, exp, start, end, client) for s in SERIES]
    except PrometheusUnavailable as exc:
        summary.why = f"not read: {exc}"
    return summary

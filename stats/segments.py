"""Results by segment: the test of heterogeneity, corrections within a chosen scope, and intervals that agree
with the corrected p-values (docs/stats.md, "Segments").

Pure functions over effects, their standard errors and p-values, as the rest of ``stats``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as st

from .errors import InvalidSpecification
from .multiple_testing import adjust_p_values

CorrectionScope = Literal["per_dimension", "per_metric", "global"]
SCOPES: tuple[CorrectionScope, ...] = ("per_dimension", "per_metric", "global")
UNBOUNDED_P = 0.999999
"""An adjusted p-value at or above this gives an unbounded interval (no finite one agrees with it)."""


@dataclass(frozen=True)
class Heterogeneity:
    """Cochran's Q test that one effect holds in every segment (arm x segment interaction)."""

    q: float
    df: int
    p_value: float
    pooled: float  # the inverse-variance weighted mean effect
    segments: int


def heterogeneity(effects: Sequence[float], standard_errors: Sequence[float]) -> Heterogeneity | None:
    """Return Cochran's Q test of the segments' effects (None with fewer than two usable segments).

    Q = sum w_i (theta_i - theta_bar)^2 with w_i = 1 / se_i^2 and theta_bar their weighted mean; under
    one common effect, Q ~ chi-square with k - 1 degrees of freedom. It is the Wald test of the arm x
    segment interaction in a model with one effect per segment and each segment's own variance.
    Segments with a zero or undefined standard error carry no information and are left out.
    """
    pairs = [(e, s) for e, s in zip(effects, standard_errors, strict=True)
             if math.isfinite(e) and math.isfinite(s) and s > 0]
    if len(pairs) < 2:
        return None
    theta = np.array([e for e, _ in pairs])
    w = 1.0 / np.array([s for _, s in pairs]) ** 2
    pooled = float(np.sum(w * theta) / np.sum(w))
    q = float(np.sum(w * (theta - pooled) ** 2))
    df = len(pairs) - 1
    return Heterogeneity(q, df, float(st.chi2.sf(q, df)), pooled, len(pairs))


def family_key(scope: CorrectionScope, dimension: str, metric: str) -> Hashable:
    """Return the correction family of a segment result under ``scope``: one dimension's values of one
    metric (``per_dimension``), every segment of one metric (``per_metric``), or every segment result of
    the report (``global``). A family holds every treatment arm."""
    if scope == "per_dimension":
        return (dimension, metric)
    if scope == "per_metric":
        return metric
    if scope == "global":
        return "all"
    raise InvalidSpecification(f"unknown correction scope {scope!r}; use one of {list(SCOPES)}")


def adjust_within(p_values: Sequence[float], families: Sequence[Hashable], method: str) -> list[float]:
    """Return the p-values adjusted by ``method`` (holm, bh, bonferroni, none) within each family."""
    out = [1.0] * len(p_values)
    groups: dict[Hashable, list[int]] = {}
    for i, f in enumerate(families):
        groups.setdefault(f, []).append(i)
    for members in groups.values():
        for i, p in zip(members, adjust_p_values([p_values[i] for i in members], method), strict=True):
            out[i] = p
    return out


def agreeing_interval(estimate: float, ci: tuple[float, float], p_value: float, p_adjusted: float,
                      alpha: float) -> tuple[float, float]:
    """Return a two-sided interval that excludes 0 exactly when ``p_adjusted < alpha``.

    Without a correction (``p_adjusted <= p_value``) it is ``ci`` itself. Otherwise it is the
    estimate +- z(1 - alpha/2) x the standard error a z test would need to give ``p_adjusted``
    (GrowthBook's method, growthbook#1740); unbounded when that p-value is at or near 1.
    """
    if p_adjusted <= p_value:
        return ci
    if p_adjusted >= UNBOUNDED_P or estimate == 0 or not math.isfinite(estimate):
        return (-math.inf, math.inf)
    z_adj = float(st.norm.isf(p_adjusted / 2))
    half = float(st.norm.isf(alpha / 2)) * abs(estimate) / z_adj
    return (estimate - half, estimate + half)


def agreeing_bound(harm: float, lower: float, margin: float, p_value: float, p_adjusted: float,
                   alpha: float) -> float:
    """Return a guardrail's one-sided lower bound of the harm that lies above the margin exactly when
    ``p_adjusted < alpha`` (``p_value``: its :func:`breach_p_value`); ``lower`` itself without a correction."""
    if p_adjusted <= p_value:
        return lower
    if p_adjusted >= UNBOUNDED_P:
        return -math.inf
    z_adj = float(st.norm.isf(p_adjusted))
    if z_adj <= 0:  # p >= 0.5: the harm is at most the margin, never breached
        return min(lower, margin)
    return harm - float(st.norm.isf(alpha)) * (harm - margin) / z_adj


def breach_p_value(harm: float, lower: float, margin: float, alpha: float) -> float | None:
    """Return the one-sided p-value of "the harm exceeds the margin" implied by a guardrail's bound.

    The bound is ``harm - z(1 - alpha) x se`` (a sequential bound included: its width gives the
    standard error it implies), so the p-value is below ``alpha`` exactly when ``lower > margin``,
    the guardrail's own rule. None when the bound gives no standard error.
    """
    if not all(math.isfinite(v) for v in (harm, lower, margin)) or harm <= lower:
        return None
    se = (harm - lower) / float(st.norm.isf(alpha))
    return float(st.norm.sf((harm - margin) / se))

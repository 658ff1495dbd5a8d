"""Quantile metrics (latency p50/p95): the per-arm statistics a query computes, from raw values."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ._dist import norm_ppf
from .statistics import QuantileStats, RatioStats


def rank_bounds(n: int, p: float, alpha: float = 0.05) -> tuple[float, float]:
    """Return the quantile levels p -+ z sqrt(p(1-p)/n) whose values bound the p-quantile (binomial)."""
    z = norm_ppf(1 - alpha / 2)
    h = z * math.sqrt(p * (1 - p) / n)
    return max(0.0, p - h), min(1.0, p + h)


def quantile_stats(values: object, p: float, alpha: float = 0.05, design_effect: float = 1.0) -> QuantileStats:
    """Return the :class:`QuantileStats` of an arm's values (SQL: quantile_cont at p and at the rank bounds)."""
    a = np.asarray(values, dtype=float)
    lo, hi = rank_bounds(a.size, p, alpha)
    est, lower, upper = np.quantile(a, [p, lo, hi])
    return QuantileStats(int(a.size), p, float(est), float(lower), float(upper), norm_ppf(1 - alpha / 2),
                         design_effect)


def quantile_design_effect(below: RatioStats) -> float:
    """Return the variance inflation of a quantile estimated from observations clustered in units (>= 1).

    ``below`` holds, per unit, the number of its observations at or below the estimated quantile
    (numerator) and its number of observations (denominator). The fraction below is a ratio metric
    whose delta-method variance accounts for the clustering; divided by the binomial variance
    F(1-F)/n that its n = sum(denominator) observations would give if independent, it is the design
    effect that widens the quantile's interval (Deng, Knoblich and Lu 2018, section 4). Floored at
    1: a clustered sample is never treated as more informative than an independent one.
    """
    if below.n < 2 or below.den_sum < 2:
        return 1.0
    fraction = below.ratio
    if not 0 < fraction < 1:
        return 1.0
    independent = fraction * (1 - fraction) / below.den_sum
    return max(1.0, below.variance_of_ratio / independent)


def clustered_quantile_stats(values: object, units: object, p: float, alpha: float = 0.05) -> QuantileStats:
    """Return the :class:`QuantileStats` of an arm's values with the design effect of their units.

    ``units`` gives, for each value, the unit (user) it came from; the SQL in
    ``service.kpi_queries`` computes the same from the lake.
    """
    a = np.asarray(values, dtype=float)
    u = np.asarray(units)
    if a.shape != u.shape:
        raise ValueError("values and units must have the same length")
    plain = quantile_stats(a, p, alpha)
    _, unit_index = np.unique(u, return_inverse=True)
    below = np.bincount(unit_index, weights=(a <= plain.estimate).astype(float))
    counts = np.bincount(unit_index).astype(float)
    return replace(plain, design_effect=quantile_design_effect(RatioStats.from_values(below, counts)))

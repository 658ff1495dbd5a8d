"""Quantile metrics (latency p50/p95): the per-arm statistics a query computes, from raw values."""

from __future__ import annotations

import math

import numpy as np

from ._dist import norm_ppf
from .statistics import QuantileStats


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

"""Outlier capping (winsorisation) of per-unit values before their statistics are summed.

Capping has to happen on per-unit values, so in the query that builds the sufficient statistics
(SQL: ``LEAST(value, cap)``, with ``cap`` from ``quantile_cont(value, 0.99)`` over both arms
together); these helpers do the same on arrays.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidSpecification


def cap_threshold(values: object, quantile: float) -> float:
    """Return the value at ``quantile`` of all units of all arms: the cap to apply to each unit."""
    if not 0 < quantile < 1:
        raise InvalidSpecification(f"quantile must be in (0, 1), got {quantile!r}")
    return float(np.quantile(np.asarray(values, dtype=float), quantile))


def winsorize(values: object, upper: float, lower: float | None = None) -> np.ndarray:
    """Return the values clipped to [lower, upper] (lower: no floor when None)."""
    a = np.asarray(values, dtype=float)
    return np.clip(a, -np.inf if lower is None else lower, upper)

"""Correction of p-values across metrics and arms: Holm, Benjamini-Hochberg, Bonferroni.

Written out here rather than calling statsmodels' ``multipletests``, which runs ``gc.collect()``
on every call (about 40 ms): that alone took 85% of the time to analyse 1,000 comparisons.
tests/test_stats_reference.py checks these against statsmodels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidSpecification

METHODS = ("holm", "bh", "bonferroni", "none")


def adjust_p_values(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Return adjusted p-values: Holm (family-wise error), Benjamini-Hochberg (false discovery rate),
    Bonferroni, or ``none``."""
    if method not in METHODS:
        raise InvalidSpecification(f"unknown correction {method!r}; use one of {list(METHODS)}")
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if method == "none" or m <= 1:
        return p.tolist()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0).tolist()
    order = np.argsort(p)
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:  # Benjamini-Hochberg step-up
        adj = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out.tolist()

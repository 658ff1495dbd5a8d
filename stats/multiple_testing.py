"""Correction of p-values across metrics and arms (statsmodels' implementations)."""

from __future__ import annotations

from collections.abc import Sequence

from statsmodels.stats.multitest import multipletests

from .errors import InvalidSpecification

METHODS = {"holm": "holm", "bh": "fdr_bh", "bonferroni": "bonferroni"}


def adjust_p_values(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Return adjusted p-values: Holm (family-wise error), Benjamini-Hochberg (false discovery rate),
    Bonferroni, or ``none``."""
    if method == "none" or len(p_values) <= 1:
        return list(p_values)
    if method not in METHODS:
        raise InvalidSpecification(f"unknown correction {method!r}; use one of {[*METHODS, 'none']}")
    return [float(p) for p in multipletests(list(p_values), method=METHODS[method])[1]]

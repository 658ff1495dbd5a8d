"""Interaction between two concurrent experiments: does one experiment's effect depend on the arm a unit
has in the other? (docs/stats.md, "Interactions between experiments")

Over the units exposed in both, a metric's cell means m[a, b] (arm a of the first experiment, arm b of
the second) give the interaction contrasts c[a, b] = m[a, b] - m[a, 0] - m[0, b] + m[0, 0] for every
treatment arm a and b (0: each control). Cells are independent samples, so the contrasts' covariance is
a sum of the cells' variances; the Wald statistic c' S^-1 c is chi-square with (A - 1)(B - 1) degrees of
freedom under no interaction. With each cell's own variance s^2/n it equals the Wald test of the
interaction terms of the saturated OLS model y ~ a * b with HC2 standard errors
(tests/test_interactions.py checks it against statsmodels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from .errors import InvalidStatistics
from .estimates import ArmEstimate, mean_estimate, quantile_estimate, ratio_estimate
from .statistics import QuantileStats, RatioStats, SampleStats


@dataclass(frozen=True)
class InteractionTest:
    """The Wald test of no interaction, and the contrasts it tested (by (arm, other arm))."""

    statistic: float
    df: int
    p_value: float
    contrasts: dict[tuple[str, str], float]
    units: int


def cell_estimate(s: SampleStats | RatioStats | QuantileStats) -> ArmEstimate:
    """Return a cell's mean and the variance of that mean (s^2/n; a ratio's delta method; a quantile's
    interval width)."""
    if isinstance(s, SampleStats):
        return mean_estimate(s)
    if isinstance(s, RatioStats):
        return ratio_estimate(s)
    if isinstance(s, QuantileStats):
        return quantile_estimate(s)
    raise InvalidStatistics(f"no interaction test for {type(s).__name__}")


def interaction_test(cells: Mapping[tuple[str, str], SampleStats | RatioStats | QuantileStats],
                     arms: Sequence[str], other_arms: Sequence[str]) -> InteractionTest | None:
    """Return the test of arm x other-arm interaction from each cell's statistics (``arms[0]`` and
    ``other_arms[0]`` are the controls); None when a cell is missing or has no variance."""
    try:
        est = {key: cell_estimate(cells[key]) for key in ((a, b) for a in arms for b in other_arms)}
    except (KeyError, InvalidStatistics):
        return None
    if any(not np.isfinite(e.variance) or e.variance <= 0 for e in est.values()):
        return None
    a0, b0 = arms[0], other_arms[0]
    keys = [(a, b) for a in arms[1:] for b in other_arms[1:]]
    c = np.array([est[(a, b)].mean - est[(a, b0)].mean - est[(a0, b)].mean + est[(a0, b0)].mean for a, b in keys])
    cov = np.empty((len(keys), len(keys)))
    for i, (a, b) in enumerate(keys):
        for j, (x, y) in enumerate(keys):
            cov[i, j] = (est[(a0, b0)].variance + (est[(a, b0)].variance if a == x else 0.0)
                         + (est[(a0, b)].variance if b == y else 0.0)
                         + (est[(a, b)].variance if (a, b) == (x, y) else 0.0))
    w = float(c @ np.linalg.solve(cov, c))
    units = sum(e.n for e in est.values())
    return InteractionTest(w, len(keys), float(st.chi2.sf(w, len(keys))), dict(zip(keys, c.tolist(), strict=True)),
                           units)

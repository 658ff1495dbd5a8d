"""Per-arm estimators: each metric kind reduced to an estimate and the variance of that estimate.

Every comparison, sequential test and Bayesian summary works on a pair of :class:`ArmEstimate`,
so a new metric kind only needs a function here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InvalidStatistics
from .statistics import QuantileStats, RatioStats, RegressionStats, SampleStats


@dataclass(frozen=True, slots=True)
class ArmEstimate:
    """An arm's estimate, the variance of that estimate, its units, and t degrees of freedom if any."""

    mean: float
    variance: float
    n: int
    df: float | None = None  # None: use the normal distribution

    @property
    def se(self) -> float:
        """Return the standard error of the estimate."""
        return self.variance**0.5


def binary_estimate(s: SampleStats) -> ArmEstimate:
    """Return the proportion and its variance p(1-p)/n."""
    s.require(1)
    if not s.is_binary_compatible:
        raise InvalidStatistics("binary metric: sum must equal sum_squares and lie in [0, n] (values 0/1)")
    p = s.mean
    return ArmEstimate(p, p * (1 - p) / s.n, s.n)


def mean_estimate(s: SampleStats) -> ArmEstimate:
    """Return the mean and its variance s^2/n, with n-1 degrees of freedom (Welch)."""
    s.require(2)
    return ArmEstimate(s.mean, s.variance / s.n, s.n, s.n - 1)


def ratio_estimate(r: RatioStats) -> ArmEstimate:
    """Return the ratio of sums and its delta-method variance."""
    return ArmEstimate(r.ratio, r.variance_of_ratio, r.n)


def quantile_estimate(q: QuantileStats) -> ArmEstimate:
    """Return the quantile and its variance, read off the width of its distribution-free interval.

    (upper - lower) ~ 2 z sqrt(p(1-p)/n) / f(q), so se = (upper - lower) / (2 z) (Deng, Knoblich
    and Lu 2018, section 4), times the design effect for clustered observations.
    """
    se = (q.upper - q.lower) / (2 * q.z)
    return ArmEstimate(q.estimate, se * se * q.design_effect, q.n)


def cuped_theta(arms: Mapping[str, RegressionStats]) -> float:
    """Return theta = cov(y, x) / var(x) computed on all arms' units together (pooled).

    Pooling keeps the adjustment identical across arms, so it removes covariate noise without
    biasing the difference (Deng, Xu, Kohavi and Walker 2013).
    """
    total = sum(arms.values(), start=RegressionStats(0, 0.0, 0.0, 0.0, 0.0, 0.0))
    vx = total.x.variance
    if vx == 0:
        raise InvalidStatistics("CUPED: the covariate has zero variance")
    return total.covariance / vx


def cuped_estimates(arms: Mapping[str, RegressionStats], theta: float | None = None) -> dict[str, ArmEstimate]:
    """Return each arm's CUPED-adjusted mean, mean(y) - theta (mean(x) - pooled mean(x)), and its variance.

    The variance is var(y - theta x) / n, computed from the arm's own sums.
    """
    if theta is None:
        theta = cuped_theta(arms)
    total_n = sum(r.n for r in arms.values())
    x_pooled = sum(r.x_sum for r in arms.values()) / total_n
    out = {}
    for name, r in arms.items():
        if r.n < 2:
            raise InvalidStatistics(f"CUPED: arm {name!r} needs at least 2 units, got {r.n}")
        var_adj = r.y.variance + theta**2 * r.x.variance - 2 * theta * r.covariance
        out[name] = ArmEstimate(r.y.mean - theta * (r.x.mean - x_pooled), max(0.0, var_adj) / r.n, r.n, r.n - 2)
    return out

"""Regression adjustment (CUPED) with several covariates, for means and for ratio metrics.

Per unit, a vector of columns: the metric (a mean: ``y``; a ratio: numerator ``y`` and denominator
``d``), then k covariates ``z`` measured before the unit's first exposure. The sufficient
statistics are n, the column sums and the cross-products, of values shifted by a reference
(:class:`MomentStats`, the output of one SQL aggregate; merged by addition).

The estimator linearises the metric (a mean: l = y; a ratio R = mean(y) / mean(d): the delta
method's l = (y - R d) / mean(d), Deng et al. 2018), and removes the part of l that the covariates
predict: theta = Sigma_zz^+ cov(z, l) on all arms' units together (pooled, so the adjustment is the
same in every arm and the difference stays unbiased; Deng, Xu, Kohavi and Walker 2013). Each arm's
estimate is M_a - theta' (mean_a(z) - mean_pooled(z)), its variance
(var_a(l) - 2 theta' cov_a(z, l) + theta' Sigma_zz,a theta) / n_a. This is the ratio regression
adjustment of GrowthBook's gbstats and Eppo ("CUPED for ratio metrics") written for any number of
covariates. A missing pre-period value enters as 0 with an indicator covariate "has pre-period
data", so a unit without history keeps its own value instead of being dropped. The
pseudo-inverse makes a covariate without variance (no unit with history) a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import InvalidStatistics
from .estimates import ArmEstimate


@dataclass(frozen=True, slots=True)
class MomentStats:
    """n units' column sums and cross-products, of values minus ``shift``.

    Columns: the metric (``ratio``: numerator then denominator), then the covariates.
    ``cross[i][j]`` is the sum over units of (v_i - shift_i)(v_j - shift_j).
    """

    n: int
    sums: tuple[float, ...]
    cross: tuple[tuple[float, ...], ...]
    shift: tuple[float, ...]
    ratio: bool = False

    def __post_init__(self) -> None:
        p = len(self.sums)
        if self.n < 0 or self.n != int(self.n):
            raise InvalidStatistics(f"n must be a non-negative whole number, got {self.n!r}")
        if len(self.shift) != p or len(self.cross) != p or any(len(r) != p for r in self.cross):
            raise InvalidStatistics("sums, shift and cross-products must have matching sizes")
        if p < (3 if self.ratio else 2):
            raise InvalidStatistics("need the metric's column(s) and at least one covariate")
        if not all(np.isfinite(self.sums)) or not np.all(np.isfinite(self.cross)):
            raise InvalidStatistics("sums and cross-products must be finite")

    @classmethod
    def from_columns(cls, columns: object, ratio: bool = False) -> MomentStats:
        """Return the statistics of a units x columns array, shifted by the column means."""
        a = np.asarray(columns, dtype=float)
        if a.ndim != 2:
            raise InvalidStatistics("columns must be a 2-D array: units x columns")
        shift = a.mean(axis=0) if a.shape[0] else np.zeros(a.shape[1])
        c = a - shift
        return cls(int(a.shape[0]), tuple(c.sum(axis=0)), tuple(map(tuple, c.T @ c)), tuple(shift), ratio)

    @property
    def covariates(self) -> int:
        """Return the number of covariate columns."""
        return len(self.sums) - (2 if self.ratio else 1)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.asarray(self.sums), np.asarray(self.cross), np.asarray(self.shift)

    def shifted(self, shift: tuple[float, ...]) -> MomentStats:
        """Return the same statistics around another shift (exact algebra)."""
        s, c, k = self._arrays()
        d = k - np.asarray(shift)
        if not d.any():
            return self
        s2 = s + self.n * d
        c2 = c + np.outer(d, s) + np.outer(s, d) + self.n * np.outer(d, d)
        return MomentStats(self.n, tuple(s2), tuple(map(tuple, c2)), tuple(shift), self.ratio)

    def __add__(self, other: MomentStats) -> MomentStats:
        if other.ratio != self.ratio or len(other.sums) != len(self.sums):
            raise InvalidStatistics("cannot add moment statistics of different layouts")
        o = other.shifted(self.shift)
        s, c, _ = self._arrays()
        return MomentStats(self.n + o.n, tuple(s + np.asarray(o.sums)),
                           tuple(map(tuple, c + np.asarray(o.cross))), self.shift, self.ratio)

    def mean_and_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the column means and the sample covariance matrix (n - 1)."""
        if self.n < 2:
            raise InvalidStatistics(f"need at least 2 units, got n={self.n}")
        s, c, k = self._arrays()
        mean = k + s / self.n
        cov = (c - np.outer(s, s) / self.n) / (self.n - 1)
        return mean, cov


@dataclass(frozen=True, slots=True)
class _Linear:
    """An arm's linearised metric: its estimate, var(l), cov(z, l), Sigma_zz and mean(z)."""

    estimate: float
    var_l: float
    cov_zl: np.ndarray
    cov_zz: np.ndarray
    mean_z: np.ndarray
    n: int


def _linearise(m: MomentStats) -> _Linear:
    mean, cov = m.mean_and_cov()
    if not m.ratio:
        return _Linear(float(mean[0]), float(cov[0, 0]), cov[1:, 0], cov[1:, 1:], mean[1:], m.n)
    y, d = mean[0], mean[1]
    if d == 0:
        raise InvalidStatistics("ratio undefined: the denominator's mean is 0")
    r = y / d
    var_l = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (d * d)
    cov_zl = (cov[2:, 0] - r * cov[2:, 1]) / d
    return _Linear(float(r), float(var_l), cov_zl, cov[2:, 2:], mean[2:], m.n)


@dataclass(frozen=True, slots=True)
class AdjustedEstimates:
    """Per-arm estimates with the adjustment, without it, and the pooled coefficients."""

    adjusted: dict[str, ArmEstimate]
    unadjusted: dict[str, ArmEstimate]
    theta: tuple[float, ...]


def regression_adjusted(arms: Mapping[str, MomentStats]) -> AdjustedEstimates:
    """Return each arm's CUPED-adjusted estimate and variance, and the unadjusted ones for comparison."""
    layouts = {(m.ratio, len(m.sums)) for m in arms.values()}
    if len(layouts) != 1:
        raise InvalidStatistics("every arm needs the same columns")
    lin = {a: _linearise(m) for a, m in arms.items()}
    pooled = _linearise(sum(arms.values(), start=_zero_like(next(iter(arms.values())))))
    theta = np.linalg.pinv(pooled.cov_zz, rcond=1e-10, hermitian=True) @ pooled.cov_zl
    adjusted, unadjusted = {}, {}
    for a, li in lin.items():
        var_adj = li.var_l - 2 * theta @ li.cov_zl + theta @ li.cov_zz @ theta
        est = li.estimate - float(theta @ (li.mean_z - pooled.mean_z))
        adjusted[a] = ArmEstimate(est, max(0.0, float(var_adj)) / li.n, li.n)
        unadjusted[a] = ArmEstimate(li.estimate, max(0.0, li.var_l) / li.n, li.n)
    return AdjustedEstimates(adjusted, unadjusted, tuple(float(t) for t in theta))


def _zero_like(m: MomentStats) -> MomentStats:
    p = len(m.sums)
    return MomentStats(0, (0.0,) * p, ((0.0,) * p,) * p, m.shift, m.ratio)

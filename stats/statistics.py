"""Sufficient statistics: what a warehouse query returns per arm, and all the engine needs.

Each is a small frozen dataclass with the estimator it supports as properties; ``+`` merges two
(days, partitions), so the same inputs come from SQL, a stream or a notebook. Construction
validates: impossible input raises :class:`InvalidStatistics` naming the field, never a silent 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InvalidStatistics

# Relative tolerance for sum of squares vs sum (floating-point sums from a warehouse are not exact).
_REL_TOL = 1e-9


def _check_n(n: int | float, name: str = "n") -> None:
    if not isinstance(n, int | float) or n != int(n) or n < 0:
        raise InvalidStatistics(f"{name} must be a non-negative whole number, got {n!r}")


def _check_finite(**values: float) -> None:
    for name, v in values.items():
        if not math.isfinite(v):
            raise InvalidStatistics(f"{name} must be finite, got {v!r}")


@dataclass(frozen=True, slots=True)
class SampleStats:
    """n units, the sum of their values and the sum of squares (continuous or binary metrics).

    With ``shift`` = c the sums are of (value - c): a warehouse query subtracts a reference near
    the mean (``SUM(v - c)``, ``SUM((v - c)^2)``) so that the sum of squares keeps its digits.
    Raw sums of values near 1e6 with a spread of 0.01 lose every digit of the variance to
    cancellation; shifted sums keep them. The mean is c + sum / n; the variance does not depend on c.
    """

    n: int
    sum: float
    sum_squares: float
    shift: float = 0.0

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite(sum=self.sum, sum_squares=self.sum_squares, shift=self.shift)
        if self.sum_squares < 0:
            raise InvalidStatistics(f"sum_squares must be >= 0, got {self.sum_squares!r}")
        if self.n == 0 and (self.sum != 0 or self.sum_squares != 0):
            raise InvalidStatistics("n is 0 but sum or sum_squares is not")
        # Cauchy-Schwarz: sum^2 <= n * sum_squares
        if self.sum**2 > self.n * self.sum_squares * (1 + _REL_TOL) + 1e-12:
            raise InvalidStatistics(
                f"sum_squares {self.sum_squares!r} is too small for sum {self.sum!r} over n {self.n} "
                "(the variance would be negative)")

    @classmethod
    def from_values(cls, values: object, shift: float | None = None) -> SampleStats:
        """Return the statistics of an array of per-unit values (sums of value - ``shift``).

        Without a ``shift``, the values' own mean is subtracted (the two-pass algorithm): raw sums of
        values near 1e6 with a spread of 0.01 would lose every digit of the variance.
        """
        import numpy as np

        a = np.asarray(values, dtype=float)
        if shift is None:
            shift = float(a.mean()) if a.size else 0.0
        a = a - shift
        return cls(int(a.size), float(a.sum()), float((a * a).sum()), shift)

    @classmethod
    def binary(cls, n: int, successes: int) -> SampleStats:
        """Return the statistics of a 0/1 metric: ``successes`` ones among ``n`` units."""
        _check_n(successes, "successes")
        if successes > n:
            raise InvalidStatistics(f"successes ({successes}) cannot exceed n ({n})")
        return cls(n, float(successes), float(successes))

    def __add__(self, other: SampleStats) -> SampleStats:
        o = other.shifted(self.shift)
        return SampleStats(self.n + o.n, self.sum + o.sum, self.sum_squares + o.sum_squares, self.shift)

    def shifted(self, shift: float) -> SampleStats:
        """Return the same statistics as sums of (value - ``shift``) (exact algebra)."""
        d = self.shift - shift
        if d == 0:
            return self
        return SampleStats(self.n, self.sum + self.n * d, self.sum_squares + 2 * d * self.sum + self.n * d * d, shift)

    def require(self, minimum: int = 2) -> None:
        """Raise InvalidStatistics unless there are at least ``minimum`` units."""
        if self.n < minimum:
            raise InvalidStatistics(f"need at least {minimum} units, got n={self.n}")

    @property
    def mean(self) -> float:
        """Return the mean (raises for n = 0)."""
        self.require(1)
        return self.shift + self.sum / self.n

    @property
    def variance(self) -> float:
        """Return the unbiased sample variance (raises for n < 2)."""
        self.require(2)
        return max(0.0, (self.sum_squares - self.sum**2 / self.n) / (self.n - 1))

    @property
    def is_binary_compatible(self) -> bool:
        """Return True when the statistics can come from 0/1 values (sum equals sum of squares)."""
        s = self.shifted(0.0)
        return math.isclose(s.sum, s.sum_squares, rel_tol=1e-9, abs_tol=1e-9) and -1e-9 <= s.sum <= self.n + 1e-9


@dataclass(frozen=True, slots=True)
class RatioStats:
    """Per-unit numerator and denominator sums for a ratio metric (delta method).

    E.g. resolutions per conversation: per unit, numerator = resolved conversations and
    denominator = conversations; the metric is sum(numerator) / sum(denominator).
    """

    n: int
    num_sum: float
    num_sum_squares: float
    den_sum: float
    den_sum_squares: float
    cross_sum: float

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite(num_sum=self.num_sum, num_sum_squares=self.num_sum_squares, den_sum=self.den_sum,
                      den_sum_squares=self.den_sum_squares, cross_sum=self.cross_sum)
        SampleStats(self.n, self.num_sum, self.num_sum_squares)  # same checks for each side
        SampleStats(self.n, self.den_sum, self.den_sum_squares)
        if self.cross_sum**2 > self.num_sum_squares * self.den_sum_squares * (1 + _REL_TOL) + 1e-12:
            raise InvalidStatistics("cross_sum is inconsistent with the sums of squares (|correlation| > 1)")

    @classmethod
    def from_values(cls, numerators: object, denominators: object) -> RatioStats:
        """Return the statistics of per-unit numerator and denominator arrays."""
        import numpy as np

        x, y = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
        if x.shape != y.shape:
            raise InvalidStatistics("numerators and denominators must have the same length")
        return cls(int(x.size), float(x.sum()), float((x * x).sum()), float(y.sum()), float((y * y).sum()),
                   float((x * y).sum()))

    def __add__(self, other: RatioStats) -> RatioStats:
        return RatioStats(self.n + other.n, self.num_sum + other.num_sum,
                          self.num_sum_squares + other.num_sum_squares, self.den_sum + other.den_sum,
                          self.den_sum_squares + other.den_sum_squares, self.cross_sum + other.cross_sum)

    @property
    def ratio(self) -> float:
        """Return sum(numerator) / sum(denominator) (raises when the denominator sums to 0)."""
        if self.n < 1 or self.den_sum == 0:
            raise InvalidStatistics(f"ratio undefined: denominator sums to {self.den_sum} over n={self.n}")
        return self.num_sum / self.den_sum

    @property
    def variance_of_ratio(self) -> float:
        """Return the delta-method variance of the ratio of means (Deng et al. 2018, eq. 6)."""
        if self.n < 2:
            raise InvalidStatistics(f"need at least 2 units, got n={self.n}")
        n = self.n
        mx, my = self.num_sum / n, self.den_sum / n
        vx = (self.num_sum_squares - n * mx * mx) / (n - 1)
        vy = (self.den_sum_squares - n * my * my) / (n - 1)
        cxy = (self.cross_sum - n * mx * my) / (n - 1)
        if my == 0:
            raise InvalidStatistics("ratio undefined: the denominator's mean is 0")
        return max(0.0, (vx / my**2 - 2 * mx * cxy / my**3 + mx**2 * vy / my**4) / n)


@dataclass(frozen=True, slots=True)
class RegressionStats:
    """A metric y with a pre-period covariate x per unit: the inputs of CUPED.

    ``x`` is the same metric (or a correlated one) measured before the experiment started.
    """

    n: int
    y_sum: float
    y_sum_squares: float
    x_sum: float
    x_sum_squares: float
    xy_sum: float

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite(y_sum=self.y_sum, y_sum_squares=self.y_sum_squares, x_sum=self.x_sum,
                      x_sum_squares=self.x_sum_squares, xy_sum=self.xy_sum)
        SampleStats(self.n, self.y_sum, self.y_sum_squares)
        SampleStats(self.n, self.x_sum, self.x_sum_squares)
        if self.xy_sum**2 > self.y_sum_squares * self.x_sum_squares * (1 + _REL_TOL) + 1e-12:
            raise InvalidStatistics("xy_sum is inconsistent with the sums of squares (|correlation| > 1)")

    @classmethod
    def from_values(cls, y: object, x: object) -> RegressionStats:
        """Return the statistics of per-unit metric values y and covariate values x."""
        import numpy as np

        ya, xa = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
        if ya.shape != xa.shape:
            raise InvalidStatistics("y and x must have the same length")
        return cls(int(ya.size), float(ya.sum()), float((ya * ya).sum()), float(xa.sum()), float((xa * xa).sum()),
                   float((xa * ya).sum()))

    def __add__(self, other: RegressionStats) -> RegressionStats:
        return RegressionStats(self.n + other.n, self.y_sum + other.y_sum, self.y_sum_squares + other.y_sum_squares,
                               self.x_sum + other.x_sum, self.x_sum_squares + other.x_sum_squares,
                               self.xy_sum + other.xy_sum)

    @property
    def y(self) -> SampleStats:
        """Return the statistics of the metric alone."""
        return SampleStats(self.n, self.y_sum, self.y_sum_squares)

    @property
    def x(self) -> SampleStats:
        """Return the statistics of the covariate alone."""
        return SampleStats(self.n, self.x_sum, self.x_sum_squares)

    @property
    def covariance(self) -> float:
        """Return the sample covariance of y and x."""
        if self.n < 2:
            raise InvalidStatistics(f"need at least 2 units, got n={self.n}")
        return (self.xy_sum - self.x_sum * self.y_sum / self.n) / (self.n - 1)


@dataclass(frozen=True, slots=True)
class QuantileStats:
    """A quantile of a metric in one arm, with the order statistics that bound it.

    A warehouse computes, over the arm's n observations, the p-quantile and the values at
    ranks p -+ z*sqrt(p(1-p)/n) (the distribution-free binomial interval); see
    :func:`stats.quantile.quantile_stats`. ``design_effect`` inflates the variance when
    observations are clustered in units (many requests per user): 1 assumes independence.
    """

    n: int
    p: float
    estimate: float
    lower: float
    upper: float
    z: float = 1.959963984540054
    design_effect: float = 1.0

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite(estimate=self.estimate, lower=self.lower, upper=self.upper)
        if not 0 < self.p < 1:
            raise InvalidStatistics(f"p must be in (0, 1), got {self.p!r}")
        if not self.lower <= self.estimate <= self.upper:
            raise InvalidStatistics("need lower <= estimate <= upper")
        if self.design_effect < 1:
            raise InvalidStatistics("design_effect must be >= 1")
        if self.n < 2:
            raise InvalidStatistics(f"need at least 2 observations, got n={self.n}")

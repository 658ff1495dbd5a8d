"""Planning: sample size, minimum detectable effect, power and duration (two-sided z-tests)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy.optimize import brentq

from ._dist import norm_cdf, norm_ppf, norm_sf
from .errors import InvalidSpecification


def _z(alpha: float, power: float) -> tuple[float, float]:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise InvalidSpecification("alpha and power must be in (0, 1)")
    return norm_ppf(1 - alpha / 2), norm_ppf(power)


def sample_size_means(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8,
                      ratio: float = 1.0, sd_treatment: float | None = None) -> tuple[int, int]:
    """Return units (control, treatment) to detect an absolute ``effect`` on a mean with this power.

    n0 = (z_{1-alpha/2} + z_power)^2 (sd0^2 + sd1^2 / ratio) / effect^2, n1 = ratio * n0.
    """
    if effect == 0 or sd <= 0 or ratio <= 0:
        raise InvalidSpecification("effect must be non-zero, sd and ratio positive")
    za, zb = _z(alpha, power)
    sd1 = sd if sd_treatment is None else sd_treatment
    n0 = (za + zb) ** 2 * (sd**2 + sd1**2 / ratio) / effect**2
    return math.ceil(n0), math.ceil(n0 * ratio)


def sample_size_proportions(baseline: float, effect: float, alpha: float = 0.05, power: float = 0.8,
                            ratio: float = 1.0) -> tuple[int, int]:
    """Return units (control, treatment) to detect ``baseline`` -> ``baseline + effect``.

    Fleiss' formula for the pooled two-proportion z-test the engine uses: the pooled variance
    under H0 for the critical value, the arms' own variances under H1:
    n0 = [z_{1-a/2} sqrt(pq (1 + 1/r)) + z_power sqrt(p0 q0 + p1 q1 / r)]^2 / effect^2.
    """
    p1 = baseline + effect
    if not 0 < baseline < 1 or not 0 < p1 < 1 or effect == 0 or ratio <= 0:
        raise InvalidSpecification("baseline and baseline + effect must be distinct proportions in (0, 1)")
    za, zb = _z(alpha, power)
    pbar = (baseline + ratio * p1) / (1 + ratio)
    n0 = (za * math.sqrt(pbar * (1 - pbar) * (1 + 1 / ratio))
          + zb * math.sqrt(baseline * (1 - baseline) + p1 * (1 - p1) / ratio)) ** 2 / effect**2
    return math.ceil(n0), math.ceil(n0 * ratio)


def power_means(effect: float, sd: float, n_control: int, n_treatment: int, alpha: float = 0.05,
                sd_treatment: float | None = None) -> float:
    """Return the power of a two-sided z-test to detect ``effect`` with these sample sizes."""
    za, _ = _z(alpha, 0.5)
    sd1 = sd if sd_treatment is None else sd_treatment
    se = math.sqrt(sd**2 / n_control + sd1**2 / n_treatment)
    shift = abs(effect) / se
    return norm_sf(za - shift) + norm_cdf(-za - shift)


def mde_means(sd: float, n_control: int, n_treatment: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Return the smallest absolute effect on a mean detectable with this power and these sizes."""
    za, zb = _z(alpha, power)
    return (za + zb) * sd * math.sqrt(1 / n_control + 1 / n_treatment)


def mde_proportions(baseline: float, n_control: int, n_treatment: int, alpha: float = 0.05,
                    power: float = 0.8) -> float:
    """Return the smallest increase over ``baseline`` detectable with this power (Fleiss, as above)."""
    za, zb = _z(alpha, power)
    r = n_treatment / n_control

    def gap(d: float) -> float:
        p1 = baseline + d
        pbar = (baseline + r * p1) / (1 + r)
        se_null = math.sqrt(pbar * (1 - pbar) * (1 / n_control + 1 / n_treatment))
        se_alt = math.sqrt(baseline * (1 - baseline) / n_control + p1 * (1 - p1) / n_treatment)
        return d - za * se_null - zb * se_alt

    return float(brentq(gap, 1e-12, 1 - baseline - 1e-12))


@dataclass(frozen=True, slots=True)
class Duration:
    """Days needed to reach a total sample size at a daily rate of new units."""

    days: int
    units_needed: int
    units_per_day: float


def duration(units_needed: int, daily_units: float, coverage: float = 1.0) -> Duration:
    """Return the days to enrol ``units_needed`` when ``daily_units`` new units arrive, ``coverage`` admitted."""
    if daily_units <= 0 or not 0 < coverage <= 1:
        raise InvalidSpecification("daily_units must be positive and coverage in (0, 1]")
    per_day = daily_units * coverage
    return Duration(math.ceil(units_needed / per_day), units_needed, per_day)


def units_to_reach(gap: float, variance: float, n: int, halfwidth: Callable[[float, int], float],
                   power: float = 0.8, limit: int = 10**9) -> int | None:
    """Return the total units N (>= n) at which an estimate ``gap`` away from its bound clears it with ``power``.

    ``variance`` is the estimate's variance at ``n`` units; it shrinks as n/N. ``halfwidth(V, N)``
    is the test's half-width (z or t times sqrt(V), or a confidence sequence's): power is reached
    when gap - halfwidth(V_N, N) >= z_power sqrt(V_N). Returns None beyond ``limit`` units or for
    a gap <= 0 (an effect that is not there is never detected).
    """
    if not 0 < power < 1:
        raise InvalidSpecification("power must be in (0, 1)")
    if gap <= 0 or variance <= 0 or n < 1:
        return None
    zb = norm_ppf(power)

    def enough(total: int) -> bool:
        v = variance * n / total
        return gap - halfwidth(v, total) >= zb * math.sqrt(v)

    if enough(n):
        return n
    lo, hi = n, 2 * n
    while not enough(hi):
        if hi > limit:
            return None
        lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 1000):  # to 0.1%: a plan, not a bound
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi

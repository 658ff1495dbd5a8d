"""Fixed-horizon frequentist comparisons of a treatment arm with the control arm."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._dist import norm_ppf, norm_sf, t_ppf, t_sf
from .errors import InvalidSpecification, InvalidStatistics
from .estimates import ArmEstimate
from .statistics import SampleStats


@dataclass(frozen=True, slots=True)
class Effect:
    """Treatment minus control: absolute and relative effect with CIs, the p-value, how they were computed."""

    absolute: float
    absolute_ci: tuple[float, float]
    relative: float | None
    relative_ci: tuple[float, float] | None
    p_value: float
    se: float
    statistic: float
    df: float | None
    method: str


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise InvalidSpecification(f"alpha must be in (0, 1), got {alpha!r}")


def relative_effect(control: ArmEstimate, treatment: ArmEstimate, alpha: float) -> tuple[float | None,
                                                                                        tuple[float, float] | None]:
    """Return treatment/control - 1 and its delta-method CI; (None, None) when the control mean is 0.

    var(m1/m0) ~ v1/m0^2 + m1^2 v0/m0^4 (independent arms).
    """
    m0, m1 = control.mean, treatment.mean
    if m0 == 0:
        return None, None
    rel = m1 / m0 - 1
    se = math.sqrt(treatment.variance / m0**2 + m1**2 * control.variance / m0**4)
    z = norm_ppf(1 - alpha / 2)
    return rel, (rel - z * se, rel + z * se)


def welch_satterthwaite_df(control: ArmEstimate, treatment: ArmEstimate) -> float:
    """Return the Welch-Satterthwaite degrees of freedom of the difference of two means."""
    if control.df is None or treatment.df is None:
        raise InvalidSpecification("Welch's test needs t-based estimates (means)")
    v0, v1 = control.variance, treatment.variance
    den = (v0**2 / control.df if control.df > 0 else 0) + (v1**2 / treatment.df if treatment.df > 0 else 0)
    return (v0 + v1) ** 2 / den if den > 0 else math.inf


def compare(control: ArmEstimate, treatment: ArmEstimate, alpha: float = 0.05, method: str = "z") -> Effect:
    """Return the effect of treatment over control by a z-test or Welch's t-test (``method``)."""
    _check_alpha(alpha)
    diff = treatment.mean - control.mean
    se = math.sqrt(control.variance + treatment.variance)
    if method == "welch":
        df: float | None = welch_satterthwaite_df(control, treatment)
        name = "welch_t"
    elif method == "z":
        df = None
        name = "z"
    else:
        raise InvalidSpecification(f"unknown method {method!r}")
    if se == 0:
        raise InvalidStatistics("both arms have zero variance: no test is possible")
    stat = diff / se
    p = 2 * (norm_sf(abs(stat)) if df is None else t_sf(abs(stat), df))
    q = norm_ppf(1 - alpha / 2) if df is None else t_ppf(1 - alpha / 2, df)
    rel, rel_ci = relative_effect(control, treatment, alpha)
    return Effect(diff, (diff - q * se, diff + q * se), rel, rel_ci, p, se, stat, df, name)


def wilson_interval(successes: float, n: int, alpha: float) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion."""
    z = norm_ppf(1 - alpha / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return center - half, center + half


def compare_proportions(control: SampleStats, treatment: SampleStats, alpha: float = 0.05) -> Effect:
    """Return the effect on a binary metric: pooled two-proportion z-test, Newcombe hybrid score CI.

    Newcombe's interval (method 10 of Newcombe 1998) keeps its coverage at small n and extreme
    proportions, where the Wald interval does not; the relative effect uses the delta method.
    """
    _check_alpha(alpha)
    for name, s in (("control", control), ("treatment", treatment)):
        s.require(1)
        if not s.is_binary_compatible:
            raise InvalidStatistics(f"{name}: a binary metric needs 0/1 values (sum == sum_squares <= n)")
    n0, n1 = control.n, treatment.n
    p0, p1 = control.sum / n0, treatment.sum / n1
    diff = p1 - p0
    pooled = (control.sum + treatment.sum) / (n0 + n1)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    if se_pooled == 0:
        stat, p = 0.0, 1.0
    else:
        stat = diff / se_pooled
        p = 2 * norm_sf(abs(stat))
    l0, u0 = wilson_interval(control.sum, n0, alpha)
    l1, u1 = wilson_interval(treatment.sum, n1, alpha)
    ci = (diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2))
    a0 = ArmEstimate(p0, p0 * (1 - p0) / n0, n0)
    a1 = ArmEstimate(p1, p1 * (1 - p1) / n1, n1)
    rel, rel_ci = relative_effect(a0, a1, alpha)
    se = math.sqrt(a0.variance + a1.variance)
    return Effect(diff, ci, rel, rel_ci, p, se, stat, None, "two_proportion_z_newcombe")

"""Fixed-horizon frequentist comparisons of a treatment arm with the control arm."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ._dist import norm_ppf, norm_sf, t_ppf, t_sf
from .errors import InvalidSpecification, InvalidStatistics
from .estimates import ArmEstimate
from .statistics import SampleStats


@dataclass(frozen=True, slots=True)
class Effect:
    """Treatment minus control on both scales, each with its CI and p-value from the same distribution.

    ``absolute_ci`` excludes 0 exactly when ``p_value < alpha``, and ``relative_ci`` exactly when
    ``relative_p_value < alpha``: each interval is the inversion of its test (z, Welch's t with the
    same degrees of freedom on both scales, or the sequential mixture when sequential). ``statistic``
    is ``absolute / se``. The relative scale (treatment / control - 1) uses the delta method;
    its fields are None when the control's value is 0.
    """

    absolute: float
    absolute_ci: tuple[float, float]
    relative: float | None
    relative_ci: tuple[float, float] | None
    p_value: float
    se: float
    statistic: float
    df: float | None
    method: str
    relative_se: float | None = None
    relative_p_value: float | None = None


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise InvalidSpecification(f"alpha must be in (0, 1), got {alpha!r}")


def relative_scale(control: ArmEstimate, treatment: ArmEstimate,
                   test: Callable[[float, float], tuple[float, float]]
                   ) -> tuple[float | None, tuple[float, float] | None, float | None, float | None]:
    """Return the relative effect, its interval, se and p-value from ``test(estimate, variance)`` ->
    (half-width, p); all None when the control's value is 0, and p = 1 with no interval when the
    relative effect has no variance (no interval, no claim)."""
    v_rel = relative_variance(control, treatment)
    if v_rel is None:
        return None, None, None, None
    rel = treatment.mean / control.mean - 1
    if v_rel <= 0:
        return rel, None, 0.0, 1.0
    half, p = test(rel, v_rel)
    return rel, (rel - half, rel + half), math.sqrt(v_rel), p


def relative_variance(control: ArmEstimate, treatment: ArmEstimate) -> float | None:
    """Return the delta-method variance of treatment/control - 1, or None when the control mean is 0.

    var(m1/m0) ~ v1/m0^2 + m1^2 v0/m0^4 for independent arms (the formula of GrowthBook's gbstats).
    """
    m0, m1 = control.mean, treatment.mean
    if m0 == 0:
        return None
    return treatment.variance / m0**2 + m1**2 * control.variance / m0**4


def _two_sided_p(statistic: float, df: float | None) -> float:
    return 2 * (norm_sf(abs(statistic)) if df is None else t_sf(abs(statistic), df))


def _critical(alpha: float, df: float | None) -> float:
    return norm_ppf(1 - alpha / 2) if df is None else t_ppf(1 - alpha / 2, df)


def relative_effect(control: ArmEstimate, treatment: ArmEstimate, alpha: float, df: float | None = None
                    ) -> tuple[float | None, tuple[float, float] | None, float | None, float | None]:
    """Return the relative effect, its CI, standard error and two-sided p-value (z, or t with ``df``).

    All None when the control mean is 0 (no relative scale). A zero standard error (e.g. no event
    in the treatment arm) gives no interval and p = 1: no test is possible, and no claim is made.
    """
    v = relative_variance(control, treatment)
    if v is None:
        return None, None, None, None
    rel = treatment.mean / control.mean - 1
    se = math.sqrt(v)
    if se == 0:
        return rel, None, 0.0, 1.0
    q = _critical(alpha, df)
    return rel, (rel - q * se, rel + q * se), se, _two_sided_p(rel / se, df)


def welch_satterthwaite_df(control: ArmEstimate, treatment: ArmEstimate) -> float:
    """Return the Welch-Satterthwaite degrees of freedom of the difference of two means."""
    if control.df is None or treatment.df is None:
        raise InvalidSpecification("Welch's test needs t-based estimates (means)")
    v0, v1 = control.variance, treatment.variance
    den = (v0**2 / control.df if control.df > 0 else 0) + (v1**2 / treatment.df if treatment.df > 0 else 0)
    return (v0 + v1) ** 2 / den if den > 0 else math.inf


def compare(control: ArmEstimate, treatment: ArmEstimate, alpha: float = 0.05, method: str = "z") -> Effect:
    """Return the effect of treatment over control by a z-test or Welch's t-test (``method``), on both scales."""
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
    q = _critical(alpha, df)
    rel, rel_ci, rel_se, rel_p = relative_effect(control, treatment, alpha, df)
    return Effect(diff, (diff - q * se, diff + q * se), rel, rel_ci, _two_sided_p(stat, df), se, stat, df, name,
                  rel_se, rel_p)


def wilson_interval(successes: float, n: int, alpha: float) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion."""
    z = norm_ppf(1 - alpha / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return center - half, center + half


def newcombe_interval(control: SampleStats, treatment: SampleStats, alpha: float) -> tuple[float, float]:
    """Return Newcombe's hybrid score interval of p1 - p0 (method 10 of Newcombe 1998), at level 1 - alpha.

    Built from the two Wilson intervals, it keeps its coverage at small n and at 0 events, where
    the Wald interval collapses to a point.
    """
    p0, p1 = control.sum / control.n, treatment.sum / treatment.n
    l0, u0 = wilson_interval(control.sum, control.n, alpha)
    l1, u1 = wilson_interval(treatment.sum, treatment.n, alpha)
    diff = p1 - p0
    return diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def check_binary(name: str, s: SampleStats) -> None:
    """Raise InvalidStatistics unless ``s`` holds at least one 0/1 value."""
    s.require(1)
    if not s.is_binary_compatible:
        raise InvalidStatistics(f"{name}: a binary metric needs 0/1 values (sum == sum_squares <= n)")


def compare_proportions(control: SampleStats, treatment: SampleStats, alpha: float = 0.05) -> Effect:
    """Return the effect on a binary metric: unpooled two-proportion z-test, its Wald CI, both scales.

    One convention throughout: the statistic is the difference over the unpooled standard error
    sqrt(p0 q0 / n0 + p1 q1 / n1), the one reported, and the CI is the same z interval, so the CI
    excludes 0 exactly when p < alpha (the choice of GrowthBook and of statsmodels'
    ``test_proportions_2indep(method="wald")``). When that standard error is 0 (every unit 0, or
    every unit 1, in both arms) no test is possible: p = 1 and the interval is Newcombe's, which
    stays honest at 0 events. Guardrails never read the Wald interval (see ``guardrails``).
    """
    _check_alpha(alpha)
    check_binary("control", control)
    check_binary("treatment", treatment)
    n0, n1 = control.n, treatment.n
    p0, p1 = control.sum / n0, treatment.sum / n1
    a0 = ArmEstimate(p0, p0 * (1 - p0) / n0, n0)
    a1 = ArmEstimate(p1, p1 * (1 - p1) / n1, n1)
    diff = p1 - p0
    se = math.sqrt(a0.variance + a1.variance)
    if se == 0:
        rel = None if p0 == 0 else p1 / p0 - 1
        return Effect(diff, newcombe_interval(control, treatment, alpha), rel, None, 1.0, 0.0, 0.0, None,
                      "two_proportion_z (no variance: Newcombe interval, no test)")
    q = _critical(alpha, None)
    rel, rel_ci, rel_se, rel_p = relative_effect(a0, a1, alpha)
    return Effect(diff, (diff - q * se, diff + q * se), rel, rel_ci, _two_sided_p(diff / se, None), se, diff / se,
                  None, "two_proportion_z", rel_se, rel_p)

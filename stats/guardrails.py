"""Non-inferiority for guardrail metrics: latency, cost, escalations must not get worse by more
than a stated margin, and the claim must hold up at small samples and under continuous monitoring.

A guardrail reads the harm (the effect in the metric's bad direction, absolute or as a share of
the control) through one-sided bounds at level ``alpha`` each, so [lower, upper] is a
(1 - 2 alpha) interval (90% at the default 0.05):

- ``non_inferior``: upper < margin (harm beyond the margin is ruled out);
- ``breached``: lower > margin (harm beyond the margin is shown);
- ``inconclusive``: neither, or fewer than ``min_units`` units in an arm, or no variance.

The bounds, by metric and mode:

- binary, fixed horizon: Newcombe's hybrid score interval of the difference (Newcombe 1998, method
  10), Katz's log interval of the risk ratio with 0.5 added to each cell (statsmodels'
  ``log-adjusted``) for a relative margin: both stay honest at 0 events, where a Wald interval
  has zero width and claims non-inferiority from nothing;
- binary, sequential: the one-sided normal-mixture confidence sequence
  (:func:`.sequential.one_sided_halfwidth`) around Agresti and Caffo's (2000) adjusted difference
  (one success and one failure added per arm), or around the adjusted log risk ratio;
- other kinds: the estimate +- the one-sided critical value (z, or t with the test's Welch df)
  times its standard error, on the delta-method relative scale for a relative margin; sequential:
  the one-sided confidence sequence of that estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ._dist import norm_ppf, t_ppf
from .comparison import Effect, newcombe_interval, relative_variance
from .errors import InvalidStatistics
from .estimates import ArmEstimate
from .sequential import DEFAULT_N_STAR, one_sided_halfwidth
from .statistics import SampleStats

GuardrailStatus = Literal["non_inferior", "breached", "inconclusive"]
DEFAULT_MIN_UNITS = 100


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """The harm, its one-sided bounds, the margin, the verdict and why."""

    harm: float  # point estimate of the harm (relative when ``relative``); nan when undefined
    lower: float  # one-sided (1 - alpha) lower bound of the harm
    upper: float  # one-sided (1 - alpha) upper bound of the harm
    margin: float
    relative: bool
    alpha: float  # level of each one-sided bound
    status: GuardrailStatus
    method: str
    reason: str = ""  # why inconclusive, when it is not only "the interval straddles the margin"


@dataclass(frozen=True, slots=True)
class GuardrailSpec:
    """How to judge one guardrail: its margin, direction, level, and the analysis mode."""

    direction: str
    margin: float
    relative: bool = False
    alpha: float = 0.05
    sequential: bool = False
    n_star: int = DEFAULT_N_STAR
    min_units: int = DEFAULT_MIN_UNITS
    # a group-sequential design's one-sided boundary at this look (stats.group_sequential): with it, a
    # sequential bound is estimate +- z se at the planned looks instead of the normal mixture's
    group_z: float | None = None


def _katz_log_ratio(control: SampleStats, treatment: SampleStats) -> tuple[float, float]:
    """Return log(p1/p0) and its variance with 0.5 added to each cell (Katz et al. 1978, adjusted)."""
    x1, n1, x0, n0 = treatment.sum + 0.5, treatment.n + 0.5, control.sum + 0.5, control.n + 0.5
    return math.log(x1 / n1) - math.log(x0 / n0), max(0.0, 1 / x1 - 1 / n1 + 1 / x0 - 1 / n0)


def agresti_caffo(x0: float, n0: float, x1: float, n1: float) -> tuple[float, float]:
    """Return the difference of proportions with one success and one failure added to each arm, and its variance."""
    p0, p1 = (x0 + 1) / (n0 + 2), (x1 + 1) / (n1 + 2)
    return p1 - p0, p0 * (1 - p0) / (n0 + 2) + p1 * (1 - p1) / (n1 + 2)


def _binary_bounds(control: SampleStats, treatment: SampleStats, spec: GuardrailSpec) -> tuple[float, float, str]:
    """Return one-sided bounds of the effect (difference, or ratio - 1) of a binary metric."""
    n = control.n + treatment.n
    if spec.relative:
        log_rr, v = _katz_log_ratio(control, treatment)
        if spec.sequential:
            if v == 0:
                raise InvalidStatistics("no variance")
            h, method = _sequential_halfwidth(v, n, spec, "katz_log_ratio_adjusted")
        else:
            h = norm_ppf(1 - spec.alpha) * math.sqrt(v)
            method = "katz_log_ratio_adjusted"
        return math.exp(log_rr - h) - 1, math.exp(log_rr + h) - 1, method
    if spec.sequential:
        d, v = agresti_caffo(control.sum, control.n, treatment.sum, treatment.n)
        h, method = _sequential_halfwidth(v, n, spec, "agresti_caffo")
        return d - h, d + h, method
    lo, hi = newcombe_interval(control, treatment, 2 * spec.alpha)
    return lo, hi, "newcombe_hybrid_score"


def _sequential_halfwidth(v: float, n: int, spec: GuardrailSpec, what: str) -> tuple[float, str]:
    """Return the one-sided half-width of a sequential bound and its method: the group design's boundary
    at this look when there is one, else the normal mixture's confidence sequence."""
    prefix = f"{what}_" if what else ""
    if spec.group_z is not None:
        return spec.group_z * math.sqrt(v), f"{prefix}group_sequential_one_sided"
    return one_sided_halfwidth(v, n, spec.alpha, spec.n_star), f"{prefix}msprt_one_sided"


def _estimate_bounds(control: ArmEstimate, treatment: ArmEstimate, effect: Effect,
                     spec: GuardrailSpec) -> tuple[float, float, str]:
    """Return one-sided bounds of the effect (absolute, or relative) from the arms' estimates."""
    if spec.relative:
        v = relative_variance(control, treatment)
        if v is None:
            raise InvalidStatistics("the control's value is 0: a relative margin cannot be judged")
        est = treatment.mean / control.mean - 1
    else:
        v = control.variance + treatment.variance
        est = treatment.mean - control.mean
    if v <= 0:
        raise InvalidStatistics("no variance in either arm: nothing bounds the harm")
    if spec.sequential:
        h, method = _sequential_halfwidth(v, control.n + treatment.n, spec, "")
    else:
        q = norm_ppf(1 - spec.alpha) if effect.df is None else t_ppf(1 - spec.alpha, effect.df)
        h = q * math.sqrt(v)
        method = "welch_t_one_sided" if effect.df is not None else "z_one_sided"
    return est - h, est + h, method


def check_guardrail(spec: GuardrailSpec, effect: Effect, control: ArmEstimate, treatment: ArmEstimate,
                    control_stats: object = None, treatment_stats: object = None,
                    binary: bool = False) -> GuardrailResult:
    """Return the non-inferiority verdict of one guardrail for one treatment arm.

    ``binary`` with :class:`SampleStats` for both arms selects the intervals that stay honest at
    0 events; otherwise the bounds come from the arms' estimates.
    """
    point = effect.relative if spec.relative else effect.absolute
    sign = -1.0 if spec.direction == "increase" else 1.0  # harm = sign * effect
    harm = float("nan") if point is None else sign * point
    try:
        if binary and isinstance(control_stats, SampleStats) and isinstance(treatment_stats, SampleStats):
            lo, hi, method = _binary_bounds(control_stats, treatment_stats, spec)
        else:
            lo, hi, method = _estimate_bounds(control, treatment, effect, spec)
    except InvalidStatistics as exc:
        return GuardrailResult(harm, -math.inf, math.inf, spec.margin, spec.relative, spec.alpha, "inconclusive",
                               "none", str(exc))
    lower, upper = (sign * lo, sign * hi) if sign > 0 else (sign * hi, sign * lo)
    small = min(control.n, treatment.n)
    if small < spec.min_units:
        return GuardrailResult(harm, lower, upper, spec.margin, spec.relative, spec.alpha, "inconclusive", method,
                               f"an arm has {small} units, below the minimum sample of {spec.min_units}")
    if upper < spec.margin:
        status: GuardrailStatus = "non_inferior"
    elif lower > spec.margin:
        status = "breached"
    else:
        status = "inconclusive"
    return GuardrailResult(harm, lower, upper, spec.margin, spec.relative, spec.alpha, status, method)


def rate_excess_lower_bound(control_events: int, control_n: int, treatment_events: int, treatment_n: int,
                            alpha: float, n_star: int) -> float:
    """Return an always-valid one-sided (1 - alpha) lower bound of p_treatment - p_control.

    Agresti-Caffo-adjusted proportions (one event and one non-event added to each arm) inside
    Howard et al.'s one-sided normal-mixture confidence sequence, as the sequential binary
    guardrails: P(the bound ever exceeds the true difference) <= alpha, however often it is
    computed. Used by the rollout guard's fast path on request failures.
    """
    if min(control_n, treatment_n) < 1:
        raise InvalidStatistics("an arm has no requests")
    d, v = agresti_caffo(control_events, control_n, treatment_events, treatment_n)
    return d - one_sided_halfwidth(v, control_n + treatment_n, alpha, n_star)

"""Always-valid inference: a confidence sequence and p-value that stay valid under continuous peeking.

The normal-mixture boundary (mixture SPRT; Robbins 1970, Johari et al. 2017, Howard et al. 2021):
for a difference with estimate d and variance V, and a normal prior N(0, tau^2) on the effect,

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

is a non-negative martingale under "no effect", so p = min(1, 1/Lambda) is valid at any stopping
time (Ville's inequality), and the values d0 that keep Lambda(d0) < 1/alpha form the confidence
sequence d +- sqrt(2 V (V + tau^2) / tau^2 * (log(1/alpha) + log((V + tau^2) / V) / 2)).

Tuning: tau^2 = s2 * rho^2 where s2 = V * N is the per-unit variance and
rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / n_star makes the sequence tightest at N = n_star
units (Howard et al. 2021, eq. 14; the same choice as GrowthBook). Pick n_star near the sample
size at which you expect to decide; the default is 10,000 units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .comparison import Effect, _check_alpha, relative_effect
from .errors import InvalidSpecification, InvalidStatistics
from .estimates import ArmEstimate

DEFAULT_N_STAR = 10_000


@dataclass(frozen=True, slots=True)
class SequentialBoundary:
    """The mixture's prior variance and the half-width of the confidence sequence."""

    tau2: float
    halfwidth: float


def mixture_tau2(variance: float, n: int, alpha: float, n_star: int = DEFAULT_N_STAR) -> float:
    """Return tau^2 that makes the confidence sequence tightest at ``n_star`` units."""
    if n_star < 1:
        raise InvalidSpecification("n_star must be >= 1")
    log_a = -2 * math.log(alpha)
    rho2 = (log_a + math.log(log_a + 1)) / n_star
    return variance * n * rho2


def boundary(variance: float, n: int, alpha: float, n_star: int = DEFAULT_N_STAR) -> SequentialBoundary:
    """Return the mixture's tau^2 and the confidence sequence half-width for a difference of variance V."""
    _check_alpha(alpha)
    if variance <= 0:
        raise InvalidStatistics("the difference has zero variance: no test is possible")
    tau2 = mixture_tau2(variance, n, alpha, n_star)
    v = variance
    half = math.sqrt(2 * v * (v + tau2) / tau2 * (math.log(1 / alpha) + 0.5 * math.log((v + tau2) / v)))
    return SequentialBoundary(tau2, half)


def always_valid_p(diff: float, variance: float, tau2: float) -> float:
    """Return min(1, 1/Lambda) for the mixture likelihood ratio Lambda of ``diff`` against 0."""
    v = variance
    log_lambda = 0.5 * math.log(v / (v + tau2)) + tau2 * diff * diff / (2 * v * (v + tau2))
    return 1.0 if log_lambda <= 0 else min(1.0, math.exp(-log_lambda))


def compare_sequential(control: ArmEstimate, treatment: ArmEstimate, alpha: float = 0.05,
                       n_star: int = DEFAULT_N_STAR) -> Effect:
    """Return the effect with an always-valid p-value and confidence sequence (safe to peek at)."""
    diff = treatment.mean - control.mean
    variance = control.variance + treatment.variance
    b = boundary(variance, control.n + treatment.n, alpha, n_star)
    p = always_valid_p(diff, variance, b.tau2)
    se = math.sqrt(variance)
    rel, _ = relative_effect(control, treatment, alpha)
    rel_ci = None
    if rel is not None:
        # the same boundary on the delta-method scale of the relative effect
        m0, m1 = control.mean, treatment.mean
        v_rel = treatment.variance / m0**2 + m1**2 * control.variance / m0**4
        if v_rel > 0:
            h = boundary(v_rel, control.n + treatment.n, alpha, n_star).halfwidth
            rel_ci = (rel - h, rel + h)
    return Effect(diff, (diff - b.halfwidth, diff + b.halfwidth), rel, rel_ci, p, se, diff / se, None,
                  f"msprt_normal_mixture(n_star={n_star})")

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

Guardrails need a one-sided bound (harm below the margin, or above it): :func:`one_sided_halfwidth`
uses the one-sided normal mixture of Howard et al. (2021, Proposition 6, eq. 52),

    log M(s, v) = log(4 rho / (v + rho)) / 2 + s^2 / (2 (v + rho)) + log Phi(s / sqrt(v + rho)),

in intrinsic time v = 1/V with s = d/V, and the boundary is the s where M = 1/alpha;
rho = v_opt / (2 log(1/(2 alpha)) + log(1 + 2 log(1/(2 alpha)))) tunes it for v_opt, the
information at n_star units (their Proposition 3(a), as confseq's ``OneSidedNormalMixture``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.special import log_ndtr

from .comparison import Effect, _check_alpha, relative_scale
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


def one_sided_halfwidth(variance: float, n: int, alpha: float, n_star: int = DEFAULT_N_STAR) -> float:
    """Return h such that P(exists t: d_t - delta > h_t) <= alpha: a one-sided confidence sequence.

    ``variance`` is V, the variance of the estimate d at ``n`` units; the same h bounds the other
    side by symmetry. Valid under continuous monitoring (Howard et al. 2021, Proposition 6).
    """
    _check_alpha(alpha)
    if variance <= 0:
        raise InvalidStatistics("the difference has zero variance: no test is possible")
    if n_star < 1:
        raise InvalidSpecification("n_star must be >= 1")
    v = 1 / variance
    v_opt = n_star / (variance * n)  # information at n_star units, at the current per-unit variance
    la = math.log(1 / (2 * alpha))
    rho = v_opt / (2 * la + math.log(1 + 2 * la))
    target = math.log(1 / alpha)

    def excess(s: float) -> float:
        return (0.5 * math.log(4 * rho / (v + rho)) + s * s / (2 * (v + rho))
                + float(log_ndtr(s / math.sqrt(v + rho))) - target)

    hi = math.sqrt(v + rho)
    while excess(hi) < 0:
        hi *= 2
    s = brentq(excess, 0.0 if excess(0.0) < 0 else -hi, hi, xtol=1e-12 * hi, rtol=1e-12)
    return float(s) * variance


def compare_sequential(control: ArmEstimate, treatment: ArmEstimate, alpha: float = 0.05,
                       n_star: int = DEFAULT_N_STAR) -> Effect:
    """Return the effect with always-valid p-values and confidence sequences on both scales.

    The relative scale runs the same mixture on the delta-method variance of the relative effect,
    so each sequence excludes 0 exactly when its always-valid p-value is below alpha.
    """
    diff = treatment.mean - control.mean
    variance = control.variance + treatment.variance
    n = control.n + treatment.n
    b = boundary(variance, n, alpha, n_star)
    p = always_valid_p(diff, variance, b.tau2)
    se = math.sqrt(variance)

    def mixture(estimate: float, v: float) -> tuple[float, float]:
        br = boundary(v, n, alpha, n_star)
        return br.halfwidth, always_valid_p(estimate, v, br.tau2)

    rel, rel_ci, rel_se, rel_p = relative_scale(control, treatment, mixture)
    return Effect(diff, (diff - b.halfwidth, diff + b.halfwidth), rel, rel_ci, p, se, diff / se, None,
                  f"msprt_normal_mixture(n_star={n_star})", rel_se, rel_p)

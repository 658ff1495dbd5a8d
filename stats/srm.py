"""Sample ratio mismatch: are the units split across arms as the weights say?

A mismatch means the assignment or the logging is broken (bots, crashes in one arm, lost
events), and every other result of the experiment is suspect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from scipy.special import gammaln

from ._dist import chi2_sf
from .errors import InvalidSpecification

DEFAULT_SRM_ALPHA = 0.001
DEFAULT_CONCENTRATION = 100.0
MIN_EXPECTED_FOR_ARM_RULE = 10.0


@dataclass(frozen=True, slots=True)
class SRMResult:
    """Observed and expected units per arm, the p-value, how it was computed, and the verdict."""

    observed: dict[str, int]
    expected: dict[str, float]
    p_value: float
    method: str
    mismatch: bool
    arms: list[str] = field(default_factory=list)  # arm_counts: the arms that broke the rule


def _shares(observed: Mapping[str, int], weights: Mapping[str, float]) -> tuple[list[str], list[float]]:
    """Return the arms with a positive weight and their shares (arms of weight 0 are not in the split)."""
    if set(observed) != set(weights):
        raise InvalidSpecification(f"arms {sorted(observed)} do not match the weights {sorted(weights)}")
    if any(weights[a] < 0 for a in weights):
        raise InvalidSpecification("weights must be >= 0")
    if any(observed[a] < 0 for a in observed):
        raise InvalidSpecification("unit counts must be non-negative")
    arms = [a for a in observed if weights[a] > 0]
    if len(arms) < 2:
        raise InvalidSpecification("SRM needs at least two arms with a positive weight")
    total_w = sum(weights[a] for a in arms)
    return arms, [weights[a] / total_w for a in arms]


def srm_arm_counts(observed: Mapping[str, int], weights: Mapping[str, float]) -> SRMResult:
    """Return a failure when an arm with weight 0 has units, or an arm with a weight has fewer than 2.

    Both mean assignment or logging is broken whatever the tests say (the analysis of such an
    experiment stops before any test). The second rule applies once the arm expects at least 10
    units: P(at most 1 unit | 10 expected) < 0.0005, below the SRM alpha, so a phase's first units
    do not raise a false alarm.
    """
    n = sum(observed.values())
    arms, shares = _shares(observed, weights)
    expected = {a: n * s for a, s in zip(arms, shares, strict=True)}
    stray = [a for a in observed if weights[a] == 0 and observed[a] > 0]
    tiny = [a for a in arms if observed[a] < 2 and expected[a] >= MIN_EXPECTED_FOR_ARM_RULE]
    bad = stray + tiny
    return SRMResult(dict(observed), expected, 0.0 if bad else 1.0, "arm_counts", bool(bad), bad)


def srm_chi_square(observed: Mapping[str, int], weights: Mapping[str, float],
                   alpha: float = DEFAULT_SRM_ALPHA) -> SRMResult:
    """Return Pearson's chi-square goodness-of-fit test of the unit counts against the weights."""
    arms, shares = _shares(observed, weights)
    counts = [observed[a] for a in arms]
    n = sum(counts)
    expected = [n * s for s in shares]
    if n == 0:
        return SRMResult(dict(observed), dict(zip(arms, expected, strict=True)), 1.0, "chi_square", False)
    stat = sum((o - e) ** 2 / e for o, e in zip(counts, expected, strict=True))
    p = chi2_sf(stat, len(counts) - 1)
    return SRMResult(dict(observed), dict(zip(arms, expected, strict=True)), p, "chi_square", p < alpha)


def srm_sequential(observed: Mapping[str, int], weights: Mapping[str, float], alpha: float = DEFAULT_SRM_ALPHA,
                   concentration: float = DEFAULT_CONCENTRATION) -> SRMResult:
    """Return an anytime-valid SRM test (Lindon and Malek 2022), safe to check continuously.

    Bayes factor of a Dirichlet(concentration * shares) mixture over the arm probabilities
    against the configured shares; p = min(1, 1/BF) is valid at any stopping time.
    """
    arms, shares = _shares(observed, weights)
    counts = [observed[a] for a in arms]
    n = sum(counts)
    alphas = [concentration * s for s in shares]
    log_bf = (gammaln(sum(alphas)) - gammaln(sum(alphas) + n)
              + sum(gammaln(a + x) - gammaln(a) for a, x in zip(alphas, counts, strict=True))
              - sum(x * math.log(s) for x, s in zip(counts, shares, strict=True)))
    p = 1.0 if log_bf <= 0 else min(1.0, math.exp(-log_bf))
    expected = {a: n * s for a, s in zip(arms, shares, strict=True)}
    return SRMResult(dict(observed), expected, p, f"dirichlet_multinomial(concentration={concentration:g})",
                     p < alpha)


def srm_checks(observed: Mapping[str, int], weights: Mapping[str, float],
               alpha: float = DEFAULT_SRM_ALPHA) -> tuple[SRMResult, SRMResult, SRMResult]:
    """Return the fixed chi-square test, the sequential test and the arm-count rule, in that order.

    Either failing means the split is broken: the chi-square over the report's period has the
    power a weekly review needs (821,588 vs 815,482 units gives p = 1.8e-6, where the sequential
    test, built to be checked continuously, gives 0.0015), and the sequential one may be watched.
    """
    return srm_chi_square(observed, weights, alpha), srm_sequential(observed, weights, alpha), \
        srm_arm_counts(observed, weights)

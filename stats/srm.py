"""Sample ratio mismatch: are the units split across arms as the weights say?

A mismatch means the assignment or the logging is broken (bots, crashes in one arm, lost
events), and every other result of the experiment is suspect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy.special import gammaln

from ._dist import chi2_sf
from .errors import InvalidSpecification

DEFAULT_SRM_ALPHA = 0.001
DEFAULT_CONCENTRATION = 100.0


@dataclass(frozen=True, slots=True)
class SRMResult:
    """Observed and expected units per arm, the p-value, how it was computed, and the verdict."""

    observed: dict[str, int]
    expected: dict[str, float]
    p_value: float
    method: str
    mismatch: bool


def _shares(observed: Mapping[str, int], weights: Mapping[str, float]) -> tuple[list[str], list[float]]:
    arms = list(observed)
    if set(arms) != set(weights):
        raise InvalidSpecification(f"arms {sorted(observed)} do not match the weights {sorted(weights)}")
    if len(arms) < 2:
        raise InvalidSpecification("SRM needs at least two arms")
    total_w = sum(weights[a] for a in arms)
    if total_w <= 0 or any(weights[a] <= 0 for a in arms):
        raise InvalidSpecification("weights must be positive")
    if any(observed[a] < 0 for a in arms):
        raise InvalidSpecification("unit counts must be non-negative")
    return arms, [weights[a] / total_w for a in arms]


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

"""A Bayesian summary of an effect: chance to beat control, credible interval, expected loss.

The posterior of the difference is normal, N(d, se^2): a flat prior with the normal
approximation of the likelihood (what GrowthBook's engine does without informative priors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._dist import norm_cdf, norm_pdf, norm_ppf
from .estimates import ArmEstimate


@dataclass(frozen=True, slots=True)
class BayesianSummary:
    """Posterior summaries of treatment minus control, oriented by the metric's direction."""

    chance_to_win: float
    credible_interval: tuple[float, float]
    expected_loss: float  # E[max(0, harm)] in the metric's units, if the treatment is shipped


def summarise(control: ArmEstimate, treatment: ArmEstimate, direction: str = "increase",
              alpha: float = 0.05) -> BayesianSummary:
    """Return chance to beat control, the (1-alpha) credible interval and the expected loss of shipping."""
    d = treatment.mean - control.mean
    se = math.sqrt(control.variance + treatment.variance)
    good = d if direction == "increase" else -d  # effect in the good direction
    if se == 0:
        return BayesianSummary(1.0 if good > 0 else 0.0 if good < 0 else 0.5, (d, d), max(0.0, -good))
    z = norm_ppf(1 - alpha / 2)
    chance = norm_cdf(good / se)
    # E[max(0, -G)] for G ~ N(good, se^2)
    loss = se * norm_pdf(good / se) - good * norm_cdf(-good / se)
    return BayesianSummary(chance, (d - z * se, d + z * se), max(0.0, loss))

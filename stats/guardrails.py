"""Non-inferiority for guardrail metrics: latency, cost, escalations must not get worse by more
than a stated margin."""

from __future__ import annotations

from dataclasses import dataclass

from ._dist import norm_cdf, norm_ppf
from .comparison import Effect


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """The harm (effect in the bad direction), the non-inferiority p-value, and the verdict."""

    harm: float
    margin: float
    p_non_inferior: float
    status: str  # "non_inferior" | "breached" | "inconclusive"


def check_guardrail(effect: Effect, direction: str, margin: float, alpha: float = 0.05,
                    relative: bool = False) -> GuardrailResult:
    """Return the guardrail verdict for an absolute (or ``relative``) effect and a margin >= 0.

    - non-inferior: H0 "harm >= margin" is rejected by a one-sided test at ``alpha``;
    - breached: the harm is significant (the two-sided CI lies on the harmful side) and its
      estimate exceeds the margin;
    - otherwise inconclusive.
    """
    if relative:
        if effect.relative is None or effect.relative_ci is None:
            return GuardrailResult(float("nan"), margin, 1.0, "inconclusive")
        est, (lo, hi) = effect.relative, effect.relative_ci
        se = (hi - lo) / (2 * norm_ppf(1 - alpha / 2))
    else:
        est, (lo, hi), se = effect.absolute, effect.absolute_ci, effect.se
    harm = -est if direction == "increase" else est
    harm_lower = -hi if direction == "increase" else lo  # lower bound of the harm
    p_ni = norm_cdf((harm - margin) / se) if se > 0 else (0.0 if harm < margin else 1.0)
    if p_ni < alpha:
        status = "non_inferior"
    elif harm_lower > 0 and harm > margin:
        status = "breached"
    else:
        status = "inconclusive"
    return GuardrailResult(harm, margin, p_ni, status)

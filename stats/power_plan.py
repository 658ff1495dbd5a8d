"""What reaching the planned power takes, for a verdict that is not reached yet: units and days.

A primary is planned at its ``mde`` (else at the observed effect), a guardrail at the harm observed so
far (never less than none: optimism would promise too few days), both with the test the analysis uses
(z, the normal-mixture confidence sequence, or a group design's last boundary). All arms grow together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ._dist import norm_cdf, norm_ppf
from .engine import ExperimentResult, MetricResult
from .metric import MetricDefinition
from .power import units_to_reach
from .sequential import boundary, one_sided_halfwidth

PLANNED_POWER = 0.8

HalfWidth = Callable[[float, int], float]


class PowerPlanner:
    """Units and days to reach the planned power for a primary or a guardrail, at the current traffic."""

    def __init__(self, result: ExperimentResult, n_primary: int, units_per_day: float | None, total_units: int):
        self.o = result.options
        self.alpha_primary = self.o.alpha / max(1, n_primary)  # Bonferroni: Holm's first step, conservative
        self.units_per_day = units_per_day
        self.total = total_units

    def _more(self, needed: int | None, r: MetricResult) -> dict[str, Any]:
        pair = r.control.n + r.treatment.n
        if needed is None:
            return {"units_needed": None, "more_units": None, "days": None}
        more = max(0, math.ceil((needed - pair) * self.total / max(pair, 1)))  # all arms grow together
        days = None if not self.units_per_day else more / self.units_per_day
        return {"units_needed": math.ceil(needed * self.total / max(pair, 1)), "more_units": more, "days": days}

    def _halfwidth(self, alpha: float, two_sided: bool) -> HalfWidth:
        """Return the test's half-width as a function of (variance, units): z, or the confidence sequence."""
        o = self.o
        if o.sequential and o.group is not None:
            # the design's last planned boundary: the power of its final look (earlier looks only add)
            c = o.group.final_bound(alpha / 2 if two_sided else alpha)
            return lambda v, n: c * math.sqrt(v)
        if o.sequential:
            if two_sided:
                return lambda v, n: boundary(v, n, alpha, o.n_star).halfwidth
            return lambda v, n: one_sided_halfwidth(v, n, alpha, o.n_star)
        q = norm_ppf(1 - alpha / 2) if two_sided else norm_ppf(1 - alpha)
        return lambda v, n: q * math.sqrt(v)

    def primary(self, r: MetricResult, metric: MetricDefinition) -> dict[str, Any]:
        """Return the plan of an inconclusive primary: its planned effect, power so far, units and days."""
        gap = metric.mde if metric.mde is not None else abs(r.effect.absolute)
        half = self._halfwidth(self.alpha_primary, two_sided=True)
        n = r.control.n + r.treatment.n
        needed = units_to_reach(gap, r.effect.se ** 2, n, half, PLANNED_POWER)
        return {"planned_effect": gap, "effect_source": "mde" if metric.mde is not None else "observed",
                "power_now": power_now(gap, r.effect.se ** 2, n, half), **self._more(needed, r)}

    def guardrail(self, r: MetricResult) -> dict[str, Any]:
        """Return the plan of an unproven guardrail: the harm assumed, power so far, units and days."""
        g, o = r.guardrail, self.o
        assert g is not None
        se = r.effect.relative_se if g.relative else r.effect.se
        # plan for the harm seen so far (never less than none): optimism would promise too few days
        assumed = max(0.0, g.harm) if math.isfinite(g.harm) else 0.0
        if not se:
            return {"assumed_harm": assumed, **self._more(None, r)}
        half = self._halfwidth(o.guardrail_alpha, two_sided=False)
        n = r.control.n + r.treatment.n
        needed = units_to_reach(g.margin - assumed, se * se, n, half, PLANNED_POWER)
        return {"assumed_harm": assumed, "power_now": power_now(g.margin - assumed, se * se, n, half),
                **self._more(needed, r)}


def power_now(gap: float, variance: float, n: int, halfwidth: HalfWidth) -> float | None:
    """Return the chance that the test, at this look, clears a true ``gap`` (the power reached so far,
    under the design's own half-width), or None when it cannot be said."""
    if gap <= 0 or variance <= 0:
        return None
    sd = math.sqrt(variance)
    return norm_cdf((gap - halfwidth(variance, n)) / sd)


def units_for_everything(more_units: Sequence[int | None]) -> int | None:
    """Return the more units (all arms) that give every missing piece its power: the largest of them,
    or None when any piece is out of reach (or there is nothing to plan)."""
    if not more_units or any(m is None for m in more_units):
        return None
    return max(m for m in more_units if m is not None)

"""Seeded simulations of the whole decision (engine + verdict) under each sequential design.

An experiment with a binary primary (30% in the control), a continuous secondary and a binary guardrail
(10%, margin 0.02) grows day by day; the verdict is read at every look, daily or hourly, as a team
would. The designs:

- ``mixture``: the always-valid normal mixture at the default n_star (10,000 units);
- ``mixture_tuned``: the same, with n_star set to the experiment's planned units (docs/stats.md);
- ``group``: the group-sequential design, one planned look a day, O'Brien-Fleming-like spending;
- ``fixed``: a fixed-horizon test read once, at the planned end.

Used by tests/test_sequential_designs.py (CI-sized) and bench/sequential_designs.py (the table in
docs/stats.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from splitwatch.stats import AnalysisOptions, MetricDefinition, SampleStats, analyze, decide
from splitwatch.stats.group_sequential import GroupDesign

DESIGNS = ("mixture", "mixture_tuned", "group", "fixed")
WEIGHTS = {"base": 1, "ft": 1}


@dataclass(frozen=True)
class Scenario:
    """What the simulated experiment looks like and how often it is looked at."""

    per_day: int = 300  # units per arm per day
    days: int = 14
    primary: tuple[float, float] = (0.30, 0.30)  # control, treatment
    guardrail: tuple[float, float] = (0.10, 0.10)
    margin: float = 0.02
    looks_per_day: int = 1

    @property
    def planned_units(self) -> int:
        """Return the planned units of both arms at the end."""
        return 2 * self.per_day * self.days


@dataclass(frozen=True)
class RunOutcome:
    """The first decision of one simulated experiment other than keep running, and the day it came."""

    decision: str  # ship, roll_back, invalid, or keep_running (none by the end)
    day: float | None


def metrics(margin: float) -> list[MetricDefinition]:
    """Return the simulated experiment's metrics: a primary, a secondary and a guardrail."""
    return [MetricDefinition(name="resolved", kind="binary", role="primary"),
            MetricDefinition(name="csat", kind="continuous"),
            MetricDefinition(name="escalated", kind="binary", direction="decrease", role="guardrail",
                             margin=margin)]


def options(design: str, scenario: Scenario) -> AnalysisOptions:
    """Return the engine's options for a design."""
    if design == "mixture":
        return AnalysisOptions(sequential=True, srm_sequential=True)
    if design == "mixture_tuned":
        return AnalysisOptions(sequential=True, srm_sequential=True, n_star=scenario.planned_units)
    if design == "group":
        return AnalysisOptions(sequential=True, srm_sequential=True,
                               group=GroupDesign(scenario.planned_units, scenario.days * scenario.looks_per_day))
    if design == "fixed":
        return AnalysisOptions()
    raise ValueError(f"unknown design {design!r}; choose one of {DESIGNS}")


def simulate(design: str, scenario: Scenario, runs: int, seed: int) -> list[RunOutcome]:
    """Return each run's first decision (and when), looking at every look of the scenario."""
    rng = np.random.default_rng(seed)
    ms = metrics(scenario.margin)
    opts = options(design, scenario)
    looks = scenario.days * scenario.looks_per_day
    per_look = scenario.per_day / scenario.looks_per_day
    out = []
    for _ in range(runs):
        acc = {a: {m.name: SampleStats(0, 0.0, 0.0) for m in ms} for a in WEIGHTS}
        outcome = RunOutcome("keep_running", None)
        for look in range(1, looks + 1):
            for i, arm in enumerate(WEIGHTS):
                n = int(rng.binomial(round(2 * per_look), 0.5))  # the split itself is random, as in production
                acc[arm]["resolved"] += SampleStats.binary(n, int(rng.binomial(n, scenario.primary[i])))
                acc[arm]["escalated"] += SampleStats.binary(n, int(rng.binomial(n, scenario.guardrail[i])))
                acc[arm]["csat"] += SampleStats.from_values(rng.normal(3.8, 1.0, n), shift=3.8)
            if design == "fixed" and look < looks:
                continue  # a fixed-horizon test is read once, at the planned end
            units = {a: acc[a]["resolved"].n for a in WEIGHTS}
            res = analyze(ms, acc, "base", WEIGHTS, units, opts)
            decision = decide(res, ms, units, WEIGHTS, "base").decision
            if decision != "keep_running":
                outcome = RunOutcome(decision, look / scenario.looks_per_day)
                break
        out.append(outcome)
    return out


def summary(outcomes: list[RunOutcome], days: int) -> dict[str, float | None]:
    """Return the share of runs that shipped, rolled back, or were invalid, by day 7 and by the end,
    and the mean day of a decision (None when no run decided)."""
    n = len(outcomes)
    decided = [o.day for o in outcomes if o.day is not None]
    return {"ship": sum(o.decision == "ship" for o in outcomes) / n,
            "ship_by_day_7": sum(o.decision == "ship" and o.day is not None and o.day <= 7 for o in outcomes) / n,
            "roll_back": sum(o.decision == "roll_back" for o in outcomes) / n,
            "invalid": sum(o.decision == "invalid" for o in outcomes) / n,
            "mean_day": float(np.mean(decided)) if decided else None}

"""The verdict's rules, as data: which findings hold for each arm, and what they decide. No words here
(:mod:`.verdict_text` writes them).

Policy (design, "Metric roles and the verdict"):

- ``invalid``: a sample ratio check failed (chi-square, sequential, or arm counts), or more than
  1% of units were seen in several arms (assignment broken). Overrides the rest.
- ``roll_back``: a guardrail breached, or a primary metric significantly worse, for any arm (in a
  segment too, when the config lets segments decide; otherwise a segment's is named, not acted on).
- ``ship``: for a treatment arm, a primary better, no primary worse, every guardrail
  non-inferior, and every arm at the minimum sample.
- ``keep_running``: otherwise, with what is missing and the units and days that reach the planned
  power (80%) for each missing piece at the current traffic.

Worse secondaries and unproven guardrails are noted whatever the decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .engine import ExperimentResult, MetricResult
from .metric import MetricDefinition
from .power_plan import PowerPlanner, units_for_everything
from .srm import SRMResult

VerdictDecision = Literal["ship", "keep_running", "roll_back", "invalid"]
BROKEN_ASSIGNMENT_SHARE = 0.01


@dataclass(frozen=True)
class Finding:
    """One fact behind the verdict, as data: its ``code``, the metric and arm it is about, the figures
    it reports (``data``), and what its words need besides (the result row, the SRM test, why a metric
    was not testable, the split)."""

    code: str
    metric: str | None = None
    arm: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    result: MetricResult | None = None
    srm: SRMResult | None = None
    why: str = ""


@dataclass(frozen=True)
class SegmentFinding:
    """A segment where a guardrail is breached or a primary is worse, after the segments' correction
    (``stats.segments``): named in the verdict's sentence, deciding only when the config says so."""

    dimension: str
    value: str
    metric: str
    arm: str
    role: str
    effect: float
    p_adjusted: float  # a guardrail's: the adjusted p-value of its breach; a primary's: of its effect
    units: int


@dataclass(frozen=True)
class Judgement:
    """What the rules decide: the decision, its arm, the findings that decide it (in order), the notes
    named whatever the decision, and for a keep-running one what reaching the planned power takes."""

    decision: VerdictDecision
    arm: str | None
    findings: list[Finding]
    notes: list[Finding] = field(default_factory=list)
    also_qualifying: list[str] = field(default_factory=list)  # other arms that could ship
    guardrails: list[str] = field(default_factory=list)  # every guardrail's name (a ship says they held)
    units: Mapping[str, int] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    units_more: int | None = None
    days: float | None = None
    units_per_day: float | None = None


@dataclass
class _ArmFindings:
    """One treatment arm's findings, by kind, in the order the metrics are configured."""

    breached: list[Finding] = field(default_factory=list)
    worse: list[Finding] = field(default_factory=list)
    unproven: list[Finding] = field(default_factory=list)
    secondary_worse: list[Finding] = field(default_factory=list)
    better: list[Finding] = field(default_factory=list)
    open_primaries: list[Finding] = field(default_factory=list)  # not testable, or not yet significant


def _effect_data(r: MetricResult) -> dict[str, Any]:
    return {"effect": r.effect.absolute, "p_value_adjusted": r.p_value_adjusted}


def _bounds(r: MetricResult) -> dict[str, Any]:
    g = r.guardrail
    assert g is not None
    return {"harm": g.harm, "lower": g.lower, "upper": g.upper, "margin": g.margin}


def _why_skipped(result: ExperimentResult, metric: str) -> str:
    return result.skipped.get(metric) or result.skipped.get("every metric") or "no data"


def srm_findings(result: ExperimentResult, units: Mapping[str, int], multi_arm_units: int) -> list[Finding]:
    """Return the findings that make the experiment invalid: failed SRM checks and broken assignment."""
    out = [Finding("srm", data={"method": t.method, "p_value": t.p_value, "observed": t.observed,
                                "expected": t.expected}, srm=t)
           for t in result.srm_tests or ((result.srm,) if result.srm is not None else ()) if t.mismatch]
    total = sum(units.values())
    if total and multi_arm_units > BROKEN_ASSIGNMENT_SHARE * (total + multi_arm_units):
        out.append(Finding("broken_assignment", data={"multi_arm_units": multi_arm_units}))
    return out


class _Rules:
    """The per-arm rules over one analysed experiment."""

    def __init__(self, result: ExperimentResult, metrics: Sequence[MetricDefinition], planner: PowerPlanner):
        self.result = result
        self.primaries = [m for m in metrics if m.role == "primary"]
        self.guardrails = [m for m in metrics if m.role == "guardrail"]
        self.role_of = {m.name: m.role for m in metrics}
        self.rows = {(r.metric, r.arm): r for r in result.results}
        self.planner = planner

    def arm(self, arm: str) -> _ArmFindings:
        """Return the findings of one treatment arm."""
        f = _ArmFindings()
        prim = [(m, self.rows.get((m.name, arm))) for m in self.primaries]
        guards = [(m, self.rows.get((m.name, arm))) for m in self.guardrails]
        for _, r in guards:
            if r is not None and r.guardrail and r.guardrail.status == "breached":
                f.breached.append(Finding("guardrail_breached", r.metric, arm,
                                          {**_bounds(r), "units": r.control.n + r.treatment.n}, r))
        f.worse = [Finding("primary_worse", r.metric, arm, _effect_data(r), r)
                   for _, r in prim if r is not None and r.decision == "worse"]
        f.better = [Finding("primary_better", r.metric, arm, _effect_data(r), r)
                    for _, r in prim if r is not None and r.decision == "better"]
        for m, r in guards:
            if r is None:
                f.unproven.append(Finding("guardrail_unproven", m.name, arm,
                                          {"units_needed": None, "more_units": None, "days": None},
                                          why=_why_skipped(self.result, m.name)))
            elif r.guardrail is not None and r.guardrail.status == "inconclusive":
                f.unproven.append(Finding("guardrail_unproven", m.name, arm,
                                          {**_bounds(r), **self.planner.guardrail(r)}, r))
        f.secondary_worse = [Finding("secondary_worse", r.metric, arm, _effect_data(r), r)
                             for r in self.result.results
                             if r.arm == arm and self.role_of.get(r.metric) == "secondary" and r.decision == "worse"]
        for m, r in prim:
            if r is None:
                f.open_primaries.append(Finding("primary_untestable", m.name, arm,
                                                why=_why_skipped(self.result, m.name)))
            elif r.decision == "inconclusive":
                f.open_primaries.append(Finding("primary_inconclusive", m.name, arm, self.planner.primary(r, m), r))
        return f


def segment_findings(segments: Sequence[SegmentFinding]) -> list[Finding]:
    """Return the findings of segments where a guardrail is breached or a primary is worse."""
    return [Finding("segment_guardrail_breached" if s.role == "guardrail" else "segment_primary_worse", s.metric,
                    s.arm, {"dimension": s.dimension, "value": s.value, "effect": s.effect,
                            "p_value_adjusted": s.p_adjusted, "units": s.units}) for s in segments]


def judge(result: ExperimentResult, metrics: Sequence[MetricDefinition], units: Mapping[str, int],
          weights: Mapping[str, float], control: str, units_per_day: float | None = None,
          multi_arm_units: int = 0, segments: Sequence[SegmentFinding] = (),
          segments_decide: bool = False) -> Judgement:
    """Return what the rules decide for an analysed experiment, with every finding behind it.

    ``segments``: segments where a guardrail is breached or a primary is worse. They are named whatever
    the decision; with ``segments_decide`` they roll back like the same finding over all units."""
    context = {"units": units, "weights": weights}
    invalid = srm_findings(result, units, multi_arm_units)
    if invalid:
        return Judgement("invalid", None, invalid, **context)
    treatments = [a for a in weights if a != control]
    n_primary = sum(m.role == "primary" for m in metrics) * len(treatments)
    rules = _Rules(result, metrics, PowerPlanner(result, n_primary, units_per_day, sum(units.values())))
    min_units = result.options.min_units_per_arm
    short = [a for a in weights if weights[a] > 0 and units.get(a, 0) < min_units]
    missing: list[Finding] = []
    notes: list[Finding] = []  # named in every sentence: unproven guardrails, worse secondaries
    back: list[Finding] = []
    ship: list[tuple[str, list[Finding]]] = []
    for arm in treatments:
        f = rules.arm(arm)
        back += f.breached + f.worse
        notes += f.unproven + f.secondary_worse
        if f.better and not (f.worse or f.breached or f.unproven or short):
            ship.append((arm, f.better))
        elif not (f.worse or f.breached):
            missing += f.better + f.open_primaries
    by_segment = segment_findings(segments)
    if segments_decide:
        back += by_segment
    else:
        notes += by_segment
    if not rules.primaries:
        missing.insert(0, Finding("no_primary"))
    if short:
        missing.insert(0, Finding("min_sample", data={"min_units_per_arm": min_units, "missing_units": {
            a: min_units - units.get(a, 0) for a in short}}))
    guardrails = [m.name for m in rules.guardrails]
    if back:
        return Judgement("roll_back", back[0].arm, back, notes, **context)
    if ship:
        return Judgement("ship", ship[0][0], ship[0][1], notes, [a for a, _ in ship[1:]], guardrails, **context)
    more = [f.data.get("more_units") for f in missing + [n for n in notes if n.code == "guardrail_unproven"]
            if "more_units" in f.data]
    if short:
        shares = {a: weights[a] / sum(weights.values()) for a in short}
        more.append(max(math.ceil((min_units - units.get(a, 0)) / shares[a]) for a in short))
    units_more = units_for_everything(more)
    days = None if units_more is None or not units_per_day else units_more / units_per_day
    return Judgement("keep_running", None, missing, notes, [], guardrails, units_more=units_more, days=days,
                     units_per_day=units_per_day, **context)


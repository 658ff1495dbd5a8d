"""The verdict: ship, keep running, roll back, or invalid, built from metric roles (never table order).

Three layers, one job each: the rules decide, as data (:mod:`.verdict_rules`, which states the policy);
the power plan says what reaching 80% power takes (:mod:`.power_plan`); the words are written last
(:mod:`.verdict_text`). This module puts them together into the :class:`Verdict` every page reads,
and applies the state in force (a pause, a roll-back by the guard) with :func:`with_state`.

Every reason is data (:class:`Reason`), and the sentence names every worse secondary and every
unproven guardrail, whatever the decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .engine import ExperimentResult
from .metric import MetricDefinition
from .power_plan import PLANNED_POWER
from .verdict_rules import BROKEN_ASSIGNMENT_SHARE, SegmentFinding, VerdictDecision, judge
from .verdict_text import at_time, message, sentence, which_test_acted

__all__ = ["BROKEN_ASSIGNMENT_SHARE", "CONFIGURED_PAUSE", "PLANNED_POWER", "Reason", "StateInForce", "Verdict",
           "VerdictDecision", "decide", "json_safe", "with_state"]


@dataclass(frozen=True)
class Reason:
    """One fact behind the verdict: what (``code``), about which metric and arm, in words and as data."""

    code: str
    message: str
    metric: str | None = None
    arm: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StateInForce:
    """The experiment's state when the verdict is read: running or paused, by whom, when, why, on what.

    ``actor`` is ``guard`` (the rollout guard) or ``admin`` (a person, through the admin API); ``by``
    names the person when known; ``evidence`` is the guard's (the test that acted and its figures).
    """

    status: Literal["running", "paused"]
    actor: str
    since: str  # ISO 8601, UTC
    reason: str
    by: str | None = None
    evidence: dict[str, Any] | None = None

    @property
    def who(self) -> str:
        """Return who made the change, in words."""
        return self.by or ("the rollout guard" if self.actor == "guard" else "an operator")

    def as_dict(self) -> dict[str, Any]:
        """Return the state as JSON-ready data."""
        return {"status": self.status, "actor": self.actor, "by": self.by, "since": self.since,
                "reason": self.reason, "evidence": self.evidence}


# an experiment whose config says ``status: paused`` and that nobody changed since
CONFIGURED_PAUSE = StateInForce("paused", "admin", "", "status: paused in the config", "the config")


@dataclass(frozen=True)
class Verdict:
    """The decision, its sentence, its reasons, and what reaching the planned power takes.

    ``state`` is the experiment's state in force when it is not plainly running (a pause), and
    ``data_decision`` what the statistics alone decide when the state overrides them (see
    :func:`with_state`).
    """

    decision: VerdictDecision
    sentence: str
    arm: str | None  # the arm to ship, or the arm that triggered a roll-back
    reasons: list[Reason]
    units_to_power: int | None = None  # more units (all arms) until every missing piece has 80% power
    days_to_power: float | None = None
    state: StateInForce | None = None
    data_decision: VerdictDecision | None = None
    plan: str = ""  # the sentence's last part: what reaching the planned power takes ("" when nothing)

    @property
    def headline(self) -> str:
        """Return the decision in words, with who acted and when for a paused experiment."""
        words = self.decision.replace("_", " ")
        st = self.state
        if st is None:
            return words[:1].upper() + words[1:]
        if st.actor == "guard" and self.decision == "roll_back":
            return f"Roll back: done by the rollout guard{at_time(st.since)}"
        return f"{words[:1].upper()}{words[1:]} (paused by {st.who}{at_time(st.since, 'since')})"

    def as_dict(self) -> dict[str, Any]:
        """Return the verdict as JSON-ready data (the report's ``verdict``; NaN and infinities as None)."""
        return json_safe({"decision": self.decision, "headline": self.headline, "sentence": self.sentence,
                          "arm": self.arm, "units_to_power": self.units_to_power, "days_to_power": self.days_to_power,
                          "state": self.state.as_dict() if self.state else None,
                          "data_decision": self.data_decision or self.decision,
                          "reasons": [{"code": r.code, "metric": r.metric, "arm": r.arm, "message": r.message,
                                       **r.data} for r in self.reasons]})


def json_safe(value: Any) -> Any:
    """Return ``value`` with NaN and infinities replaced by None: strict JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def decide(result: ExperimentResult, metrics: Sequence[MetricDefinition], units: Mapping[str, int],
           weights: Mapping[str, float], control: str, units_per_day: float | None = None,
           multi_arm_units: int = 0, segments: Sequence[SegmentFinding] = (),
           segments_decide: bool = False) -> Verdict:
    """Return the verdict of an analysed experiment: the rules' judgement (:func:`.verdict_rules.judge`)
    in words (:mod:`.verdict_text`).

    ``metrics`` gives each metric's role (and planned ``mde``); ``units`` and ``weights`` the split;
    ``units_per_day`` the current traffic (new units per day, all arms), for the days to power.
    """
    j = judge(result, metrics, units, weights, control, units_per_day, multi_arm_units, segments, segments_decide)
    text, plan = sentence(j)
    reasons = [Reason(f.code, message(f, j), f.metric, f.arm, f.data) for f in j.findings + j.notes]
    if j.decision == "keep_running":
        return Verdict("keep_running", text, None, reasons, j.units_more, j.days, plan=plan)
    return Verdict(j.decision, text, j.arm, reasons)


_PLANNING = ("units_needed", "more_units", "days")


def with_state(verdict: Verdict, state: StateInForce | None) -> Verdict:
    """Return the verdict as it stands given the state in force (the state is part of the decision).

    A running experiment keeps its verdict. One paused by the rollout guard reads ``roll_back``,
    already done, with who, when and the guard's evidence first (an ``invalid`` one stays invalid:
    broken assignment overrides the rest). One paused by a person keeps the data's decision and says
    who paused it. A paused experiment gets no new units, so no verdict of it plans "more units".
    """
    if state is None or state.status != "paused":
        return verdict
    when = at_time(state.since)
    ev = state.evidence or {}
    acted = which_test_acted(ev) if state.actor == "guard" else None
    by_guard = state.actor == "guard" and verdict.decision != "invalid"
    prefix = "on the data alone: " if by_guard else ""  # the data's reasons, under the guard's decision
    reasons = [Reason(r.code, prefix + r.message, r.metric, r.arm,
                      {k: v for k, v in r.data.items() if k not in _PLANNING}) for r in verdict.reasons]
    code = "rolled_back_by_guard" if by_guard else "paused"
    head = (f"rolled back by the rollout guard{when}" + ("" if acted else f": {state.reason}") if by_guard
            else f"paused by {state.who}{when}: {state.reason}")
    paused = Reason(code, head + ("; the experiment is paused: every user is served the control arm" if by_guard
                                  else ""), ev.get("metric"), ev.get("arm"),
                    {"actor": state.actor, "by": state.by, "since": state.since, "evidence": state.evidence})
    facts = [paused] + ([Reason("acted_on", acted, data={"test": ev.get("test")})] if acted else [])
    served = " The experiment is paused: every user is served the control arm, so no new units arrive."
    if by_guard:
        sentence = (f"Roll back (done): {head}." + served
                    + (f" {acted}." if acted else "")
                    + f" On the data alone the verdict reads {verdict.decision.replace('_', ' ')}.")
        arm = ev.get("arm") or verdict.arm
        return Verdict("roll_back", sentence, arm, facts + reasons, None, None, state, verdict.decision)
    data = verdict.sentence.removesuffix(verdict.plan).rstrip() if verdict.plan else verdict.sentence
    sentence = f"{head[:1].upper()}{head[1:]}.{served} {data}"
    return Verdict(verdict.decision, sentence, verdict.arm, facts + reasons, None, None, state, verdict.decision)


"""The rollout guard's rules, as pure functions of the state in force and one analysis' evidence.

Kept free of Kafka and the lake so that the seeded simulations (tests/test_rollout_simulation.py,
bench/rollout_bench.py) run the very rules the live guard runs. docs/rollout.md states them:

- **rollback** (``auto_rollback``): a guardrail breached under its sequential test, or a sample
  ratio mismatch under the sequential (or arm-count) check, seen at ``confirmations`` consecutive
  analyses, once every arm has ``min_units_to_act`` units since the last start or resume;
- **advance**: one step up the ramp once the step has lasted ``min_minutes_per_step`` and seen
  ``min_units_per_step`` units, with no guardrail breached and no mismatch at this analysis and no
  rollback pending confirmation;
- a paused experiment is left alone: only a person resumes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from splitwatch.stats import ExperimentResult

from ..config import RolloutConfig
from ..control.state import ExperimentState

RollbackReason = Literal["guardrail", "srm", "failures"]
STEP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Evidence:
    """What one live analysis tells the guard about an experiment."""

    units: dict[str, int]  # per arm, units first exposed since the last start or resume
    step_units: int  # units exposed since the current step began
    breaches: list[dict[str, Any]] = field(default_factory=list)  # one per breached guardrail and arm
    srm: dict[str, Any] | None = None  # the failed sample ratio check, if any


@dataclass
class GuardMemory:
    """What the guard remembers between analyses of one experiment (its hysteresis)."""

    streak: int = 0  # consecutive analyses that showed harm or a mismatch
    streak_revision: int = -1  # the state the streak was counted under (a change restarts it)


@dataclass(frozen=True)
class GuardAction:
    """A change the guard makes: pause (``rollback`` says why) or a new coverage."""

    reason: str
    status: Literal["paused"] | None = None
    coverage: float | None = None
    rollback: RollbackReason | None = None
    evidence: dict[str, Any] | None = None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def evidence_from_result(result: ExperimentResult | None, units: dict[str, int], step_units: int) -> Evidence:
    """Return the guard's evidence from the engine's result (guardrails and the sequential SRM checks).

    The chi-square SRM test is left out: it is not valid when looked at at every analysis.
    """
    breaches: list[dict[str, Any]] = []
    srm = None
    if result is not None:
        for r in result.results:
            g = r.guardrail
            if g is not None and g.status == "breached":
                breaches.append({
                    "test": "guardrail", "metric": r.metric, "arm": r.arm, "harm": _finite(g.harm),
                    "lower": _finite(g.lower), "upper": _finite(g.upper), "margin": g.margin,
                    "relative": g.relative, "alpha": g.alpha, "method": g.method,
                    "control": r.control.estimate, "treatment": r.treatment.estimate,
                    "units": {r.control.arm: r.control.n, r.arm: r.treatment.n}})
        for t in result.srm_tests:
            if t.mismatch and t.method != "chi_square":
                srm = {"test": "srm", "method": t.method, "p_value": t.p_value, "observed": dict(t.observed),
                       "expected": {k: round(v, 1) for k, v in t.expected.items()}, "arms": list(t.arms)}
                break
    return Evidence(dict(units), step_units, breaches, srm)


def step_index(steps: list[float], coverage: float) -> int:
    """Return the 1-based step whose coverage is in force (0 when below the first step or no ramp)."""
    return sum(1 for s in steps if s <= coverage + STEP_TOLERANCE)


def next_step(steps: list[float], coverage: float) -> float | None:
    """Return the next coverage up the ramp, or None at (or beyond) the last step."""
    return next((s for s in steps if s > coverage + STEP_TOLERANCE), None)


def _describe_breach(b: dict[str, Any]) -> str:
    def fmt(x: float | None, sign: str = "+") -> str:
        if x is None:
            return "n/a"
        return f"{x * 100:{sign}.4g}%" if b["relative"] else f"{x:{sign}.4g}"

    return (f"guardrail {b['metric']} breached on {b['arm']}: harm {fmt(b['harm'])}, one-sided "
            f"{1 - b['alpha']:.4g} lower bound {fmt(b['lower'])} > margin {fmt(b['margin'], '')}")


def decide(rollout: RolloutConfig, state: ExperimentState, ev: Evidence, now: datetime,
           memory: GuardMemory) -> GuardAction | None:
    """Return what the guard does after one analysis (None: nothing), updating its ``memory``."""
    if state.status == "paused":
        memory.streak = 0
        return None
    if state.revision != memory.streak_revision:  # the state changed: the streak restarts
        memory.streak, memory.streak_revision = 0, state.revision
    steps = rollout.steps
    if steps and state.revision == 0:
        return GuardAction(coverage=steps[0], reason=f"rollout starts: step 1 of {len(steps)} "
                                                     f"(coverage {steps[0]:.4g})")
    harmful = bool(ev.breaches or ev.srm)
    m = rollout.min_units_to_act
    # a guardrail needs every arm exposed; a mismatch needs as many units in all (an arm may have none)
    breaches = ev.breaches if ev.units and min(ev.units.values()) >= m else []
    srm = ev.srm if sum(ev.units.values()) >= m * max(1, len(ev.units)) else None
    memory.streak = memory.streak + 1 if (breaches or srm) else 0
    if rollout.auto_rollback and (breaches or srm) and memory.streak >= rollout.confirmations:
        if breaches:
            reason = "; ".join(_describe_breach(b) for b in breaches)
            evidence = {**breaches[0], "breaches": breaches} if len(breaches) > 1 else breaches[0]
            kind: RollbackReason = "guardrail"
        else:
            assert srm is not None
            reason = (f"sample ratio mismatch ({srm['method']}, p = {srm['p_value']:.3g}): observed "
                      f"{srm['observed']}, expected {srm['expected']}")
            evidence, kind = srm, "srm"
        evidence = {**evidence, "confirmations": memory.streak}
        return GuardAction(status="paused", rollback=kind, reason=f"{reason} ({memory.streak} consecutive "
                                                                    f"analyses)", evidence=evidence)
    if harmful or not steps:
        return None
    nxt = next_step(steps, state.coverage)
    if nxt is None:
        return None
    minutes = (now - state.ts).total_seconds() / 60
    if minutes < rollout.min_minutes_per_step or ev.step_units < rollout.min_units_per_step:
        return None
    i = step_index(steps, nxt)
    return GuardAction(coverage=nxt, reason=(
        f"step {i} of {len(steps)} (coverage {nxt:.4g}): the previous step held {minutes:.1f} min and "
        f"{ev.step_units} units with no guardrail breached and no sample ratio mismatch"),
        evidence={"test": "ramp", "minutes": round(minutes, 2), "step_units": ev.step_units,
                  "units": ev.units})

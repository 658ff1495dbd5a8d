"""The verdict: ship, keep running, roll back, or invalid, built from metric roles (never table order).

Policy (design, "Metric roles and the verdict"):

- ``invalid``: a sample ratio check failed (chi-square, sequential, or arm counts), or more than
  1% of units were seen in several arms (assignment broken). Overrides the rest.
- ``roll_back``: a guardrail breached, or a primary metric significantly worse, for any arm.
- ``ship``: for a treatment arm, a primary better, no primary worse, every guardrail
  non-inferior, and every arm at the minimum sample.
- ``keep_running``: otherwise, with what is missing and the units and days that reach the planned
  power (80%) for each missing piece at the current traffic: a primary at its ``mde`` (else at the observed
  effect), a guardrail at the harm observed so far (or none, if it is negative).

Every reason is data (:class:`Reason`), and the sentence names every worse secondary and every
unproven guardrail, whatever the decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._dist import norm_cdf, norm_ppf
from .engine import ExperimentResult, MetricResult
from .metric import MetricDefinition
from .power import units_to_reach
from .sequential import boundary, one_sided_halfwidth

VerdictDecision = Literal["ship", "keep_running", "roll_back", "invalid"]
BROKEN_ASSIGNMENT_SHARE = 0.01
PLANNED_POWER = 0.8


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
            return f"Roll back: done by the rollout guard{_at(st.since)}"
        return f"{words[:1].upper()}{words[1:]} (paused by {st.who}{_at(st.since, 'since')})"

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


def _num(v: float) -> str:
    return f"{v:+.3g}"


def _harm_text(r: MetricResult) -> str:
    g = r.guardrail
    assert g is not None
    conf = round(100 * (1 - 2 * g.alpha))
    if not math.isfinite(g.harm):
        return f"no relative harm: the control's value is 0; upper bound {g.upper * 100:+.3g}%, margin {g.margin:.3g}"
    if g.relative:
        return (f"harm {g.harm * 100:+.2f}%, {conf}% interval [{g.lower * 100:+.2f}%, {g.upper * 100:+.2f}%], "
                f"margin {g.margin * 100:.3g}%")
    return f"harm {_num(g.harm)}, {conf}% interval [{_num(g.lower)}, {_num(g.upper)}], margin {g.margin:.3g}"


def _p_text(p: float) -> str:
    """Return "p < 0.001" or "p = 0.012": a p-value is never printed as 0 or in scientific notation."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _effect_text(r: MetricResult) -> str:
    e = r.effect
    rel = f" ({e.relative * 100:+.2f}%)" if e.relative is not None else ""
    return f"{_num(e.absolute)}{rel}, {_p_text(r.p_value_adjusted)}"


def _power_text(plan: Mapping[str, Any]) -> str:
    """Return "; power so far 43%" for a plan that knows it, else ""."""
    p = plan.get("power_now")
    return "" if p is None else f"; power so far {p:.0%}"


def _why_skipped(result: ExperimentResult, metric: str) -> str:
    return result.skipped.get(metric) or result.skipped.get("every metric") or "no data"


class _Planner:
    """Units and days to reach the planned power for a primary or a guardrail."""

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

    def _halfwidth(self, alpha: float, two_sided: bool) -> Callable[[float, int], float]:
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
        gap = metric.mde if metric.mde is not None else abs(r.effect.absolute)
        half = self._halfwidth(self.alpha_primary, two_sided=True)
        n = r.control.n + r.treatment.n
        needed = units_to_reach(gap, r.effect.se ** 2, n, half, PLANNED_POWER)
        return {"planned_effect": gap, "effect_source": "mde" if metric.mde is not None else "observed",
                "power_now": _power_now(gap, r.effect.se ** 2, n, half), **self._more(needed, r)}

    def guardrail(self, r: MetricResult) -> dict[str, Any]:
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
        return {"assumed_harm": assumed, "power_now": _power_now(g.margin - assumed, se * se, n, half),
                **self._more(needed, r)}


def _power_now(gap: float, variance: float, n: int, halfwidth: Callable[[float, int], float]) -> float | None:
    """Return the chance that the test, at this look, clears a true ``gap`` (the power reached so far,
    under the design's own half-width), or None when it cannot be said."""
    if gap <= 0 or variance <= 0:
        return None
    sd = math.sqrt(variance)
    return norm_cdf((gap - halfwidth(variance, n)) / sd)


def _srm_reasons(result: ExperimentResult, units: Mapping[str, int], weights: Mapping[str, float],
                 multi_arm_units: int) -> list[Reason]:
    out = []
    total_w = sum(weights.values()) or 1.0
    split = ", ".join(f"{a} {units.get(a, 0):,} ({weights.get(a, 0) / total_w:.0%} expected)" for a in weights)
    for t in result.srm_tests or ((result.srm,) if result.srm is not None else ()):
        if not t.mismatch:
            continue
        if t.method == "arm_counts":
            msg = f"arm(s) {', '.join(t.arms)} got fewer than 2 units, or units despite a weight of 0 ({split})"
        else:
            msg = f"sample ratio mismatch, {t.method} {_p_text(t.p_value)} ({split})"
        out.append(Reason("srm", msg, data={"method": t.method, "p_value": t.p_value, "observed": t.observed,
                                            "expected": t.expected}))
    total = sum(units.values())
    if total and multi_arm_units > BROKEN_ASSIGNMENT_SHARE * (total + multi_arm_units):
        out.append(Reason("broken_assignment",
                          f"{multi_arm_units:,} units were seen in several arms (over "
                          f"{BROKEN_ASSIGNMENT_SHARE:.0%} of units): assignment is not sticky",
                          data={"multi_arm_units": multi_arm_units}))
    return out


def decide(result: ExperimentResult, metrics: Sequence[MetricDefinition], units: Mapping[str, int],
           weights: Mapping[str, float], control: str, units_per_day: float | None = None,
           multi_arm_units: int = 0) -> Verdict:
    """Return the verdict of an analysed experiment.

    ``metrics`` gives each metric's role (and planned ``mde``); ``units`` and ``weights`` the split;
    ``units_per_day`` the current traffic (new units per day, all arms), for the days to power.
    """
    invalid = _srm_reasons(result, units, weights, multi_arm_units)
    if invalid:
        return Verdict("invalid", "Invalid: " + "; ".join(r.message for r in invalid)
                       + ". Assignment or logging is broken: no result of this experiment can be trusted.",
                       None, invalid)
    by_name = {m.name: m for m in metrics}
    role_of = {m.name: m.role for m in metrics}
    treatments = [a for a in weights if a != control]
    primaries = [m for m in metrics if m.role == "primary"]
    guardrails = [m for m in metrics if m.role == "guardrail"]
    n_primary = len(primaries) * len(treatments)
    planner = _Planner(result, n_primary, units_per_day, sum(units.values()))
    rows = {(r.metric, r.arm): r for r in result.results}
    reasons: list[Reason] = []
    notes: list[Reason] = []  # named in every sentence: worse secondaries, unproven guardrails
    min_units = result.options.min_units_per_arm
    short = [a for a in weights if weights[a] > 0 and units.get(a, 0) < min_units]
    ship_arms, back = [], []
    for arm in treatments:
        prim = [(m, rows.get((m.name, arm))) for m in primaries]
        guards = [(m, rows.get((m.name, arm))) for m in guardrails]
        worse = [r for _, r in prim if r is not None and r.decision == "worse"]
        better = [r for _, r in prim if r is not None and r.decision == "better"]
        breached = [r for _, r in guards if r is not None and r.guardrail and r.guardrail.status == "breached"]
        for r in breached:
            back.append(Reason("guardrail_breached", f"guardrail {r.metric} breached for {arm}: {_harm_text(r)}",
                               r.metric, arm, {"harm": r.guardrail.harm, "lower": r.guardrail.lower,  # type: ignore
                                               "upper": r.guardrail.upper, "margin": r.guardrail.margin,
                                               "units": r.control.n + r.treatment.n}))
        for r in worse:
            back.append(Reason("primary_worse", f"primary {r.metric} worse for {arm}: {_effect_text(r)}",
                               r.metric, arm, {"effect": r.effect.absolute, "p_value_adjusted": r.p_value_adjusted}))
        unproven = []
        for m, r in guards:
            if r is None:
                why = _why_skipped(result, m.name)
                unproven.append(Reason("guardrail_unproven", f"guardrail {m.name} not testable for {arm} ({why})",
                                       m.name, arm, {"units_needed": None, "more_units": None, "days": None}))
            elif r.guardrail is not None and r.guardrail.status == "inconclusive":
                why = r.guardrail.reason or _harm_text(r)
                plan = planner.guardrail(r)
                unproven.append(Reason("guardrail_unproven", f"guardrail {m.name} not yet shown non-inferior for "
                                       f"{arm} ({why}{_power_text(plan)})", m.name, arm, {
                                           "harm": r.guardrail.harm, "lower": r.guardrail.lower,
                                           "upper": r.guardrail.upper, "margin": r.guardrail.margin, **plan}))
        notes.extend(unproven)
        for r in result.results:
            if r.arm == arm and role_of.get(r.metric) == "secondary" and r.decision == "worse":
                notes.append(Reason("secondary_worse", f"secondary {r.metric} worse for {arm}: {_effect_text(r)}",
                                    r.metric, arm, {"effect": r.effect.absolute,
                                                    "p_value_adjusted": r.p_value_adjusted}))
        if better and not worse and not breached and not unproven and not short:
            ship_arms.append((arm, better))
        elif not worse and not breached:
            for r in better:
                reasons.append(Reason("primary_better", f"primary {r.metric} better for {arm} ({_effect_text(r)}), "
                                      "but not yet shippable", r.metric, arm,
                                      {"effect": r.effect.absolute, "p_value_adjusted": r.p_value_adjusted}))
            for m, r in prim:
                if r is None:
                    reasons.append(Reason("primary_untestable", f"primary {m.name} not testable for {arm} "
                                          f"({_why_skipped(result, m.name)})", m.name, arm))
                elif r.decision == "inconclusive":
                    plan = planner.primary(r, by_name[m.name])
                    reasons.append(Reason("primary_inconclusive", f"primary {m.name} not yet significant for "
                                          f"{arm} ({_effect_text(r)}{_power_text(plan)})", m.name, arm, plan))
    if not primaries:
        reasons.insert(0, Reason("no_primary", "no metric has role: primary, so nothing can ship"))
    if short:
        need = {a: min_units - units.get(a, 0) for a in short}
        reasons.insert(0, Reason("min_sample", "below the minimum sample of "
                                 f"{min_units} units per arm ({', '.join(f'{a} {units.get(a, 0)}' for a in short)})",
                                 data={"min_units_per_arm": min_units, "missing_units": need}))
    tail = "".join(f" {r.message[0].upper()}{r.message[1:]}." for r in notes)
    if back:
        arm = back[0].arm
        return Verdict("roll_back", "Roll back: " + "; ".join(r.message for r in back) + "." + tail, arm,
                       back + notes)
    if ship_arms:
        arm, better = ship_arms[0]
        also = f" (also qualifying: {', '.join(a for a, _ in ship_arms[1:])})" if len(ship_arms) > 1 else ""
        names = ", ".join(f"{r.metric} ({_effect_text(r)})" for r in better)
        guard = (f"; every guardrail non-inferior ({', '.join(m.name for m in guardrails)})" if guardrails
                 else "; no guardrail is configured")
        ship_reasons = [Reason("primary_better", f"primary {r.metric} better for {arm}: {_effect_text(r)}", r.metric,
                               arm, {"effect": r.effect.absolute, "p_value_adjusted": r.p_value_adjusted})
                        for r in better]
        return Verdict("ship", f"Ship {arm}{also}: better on {names}, no primary worse{guard}." + tail, arm,
                       ship_reasons + notes)
    missing = reasons + [r for r in notes if r.code == "guardrail_unproven"]
    more = [r.data.get("more_units") for r in missing if "more_units" in r.data]
    if short:
        shares = {a: weights[a] / sum(weights.values()) for a in short}
        more.append(max(math.ceil((min_units - units.get(a, 0)) / shares[a]) for a in short))
    units_more = None if not more or any(m is None for m in more) else max(more)  # type: ignore[type-var]
    days = None if units_more is None or not units_per_day else units_more / units_per_day
    if units_more is None:
        plan = " Reaching 80% power on what is missing is out of reach at the planned effects (or unknown)."
    elif days is None:
        plan = f" About {units_more:,} more units reach 80% power on what is missing."
    else:
        plan = (f" About {units_more:,} more units, {math.ceil(days)} more days at the current "
                f"{units_per_day:,.0f} units a day, reach 80% power on what is missing.")
    text = "Keep running: " + "; ".join(r.message for r in reasons) if reasons else "Keep running"
    sentence = (text + "." if reasons else text + ":") + tail + plan
    return Verdict("keep_running", sentence, None, reasons + notes, units_more, days, plan=plan.strip())


_PLANNING = ("units_needed", "more_units", "days")


def _at(since: str, word: str = "at") -> str:
    """Return " at 2026-12-05 20:43 UTC" for an ISO time, or "" when the time is not known."""
    return f" {word} {since[:16].replace('T', ' ')} UTC" if since else ""


def _which_test_acted(ev: dict[str, Any] | None) -> str | None:
    """Return, in one sentence, which of the guard's tests acted and why the report's may still differ."""
    if not ev:
        return None
    if ev.get("test") == "failures":
        t, c = ev["treatment"], ev["control"]

        def rate(x: dict[str, Any]) -> str:
            return "n/a" if x.get("rate") is None else f"{x['rate']:.1%}"

        return (f"The guard's fast path acted, on requests: {t['arm']} failed {t['failures']:,} of "
                f"{t['requests']:,} requests ({rate(t)}) against {c['failures']:,} of {c['requests']:,} "
                f"({rate(c)}) for {c['arm']}, and the always-valid one-sided lower bound of the excess, "
                f"{ev['lower']:+.3f}, was above the margin {ev['margin']:.3g} (alpha {ev['alpha']:.3g}, "
                f"{ev.get('method', 'n/a')}). The report's error_rate counts each user once (delta method over "
                "users, two-sided, at the report's alpha, over the units first exposed in the period), so it "
                "needs more evidence than the request-level fast path and may still read inconclusive")
    if ev.get("test") == "guardrail":
        lower, margin = ev.get("lower"), ev.get("margin")
        pct = bool(ev.get("relative"))

        def f(x: float | None) -> str:
            return "n/a" if x is None else (f"{x * 100:+.3g}%" if pct else f"{x:+.4g}")

        return (f"The guard's guardrail test acted: {ev.get('metric')} on {ev.get('arm')}, one-sided lower bound "
                f"of the harm {f(lower)} above the margin {f(margin)} (alpha {ev.get('alpha', 0):.3g} after the "
                "split over guardrails and arms, on units first exposed since the last start). The report's "
                "guardrail test reads the report's period at the report's alpha, so its status may differ")
    if ev.get("test") == "srm":
        return (f"The guard's sequential sample-ratio test acted ({ev.get('method')}, p = {ev.get('p_value', 0):.3g}):"
                " units were not split as the weights say")
    return None


def with_state(verdict: Verdict, state: StateInForce | None) -> Verdict:
    """Return the verdict as it stands given the state in force (the state is part of the decision).

    A running experiment keeps its verdict. One paused by the rollout guard reads ``roll_back``,
    already done, with who, when and the guard's evidence first (an ``invalid`` one stays invalid:
    broken assignment overrides the rest). One paused by a person keeps the data's decision and says
    who paused it. A paused experiment gets no new units, so no verdict of it plans "more units".
    """
    if state is None or state.status != "paused":
        return verdict
    when = _at(state.since)
    ev = state.evidence or {}
    acted = _which_test_acted(ev) if state.actor == "guard" else None
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


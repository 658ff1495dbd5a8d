"""The verdict in words: each finding's message and the decision's sentence (the rules are in
:mod:`.verdict_rules`; this module decides nothing)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .engine import MetricResult
from .verdict_rules import BROKEN_ASSIGNMENT_SHARE, Finding, Judgement


def _num(v: float) -> str:
    return f"{v:+.3g}"


def p_text(p: float) -> str:
    """Return "p < 0.001" or "p = 0.012": a p-value is never printed as 0 or in scientific notation."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def harm_text(r: MetricResult) -> str:
    """Return a guardrail's harm, interval and margin in words (percentages for a relative margin)."""
    g = r.guardrail
    assert g is not None
    conf = round(100 * (1 - 2 * g.alpha))
    if not math.isfinite(g.harm):
        return f"no relative harm: the control's value is 0; upper bound {g.upper * 100:+.3g}%, margin {g.margin:.3g}"
    if g.relative:
        return (f"harm {g.harm * 100:+.2f}%, {conf}% interval [{g.lower * 100:+.2f}%, {g.upper * 100:+.2f}%], "
                f"margin {g.margin * 100:.3g}%")
    return f"harm {_num(g.harm)}, {conf}% interval [{_num(g.lower)}, {_num(g.upper)}], margin {g.margin:.3g}"


def effect_text(r: MetricResult) -> str:
    """Return an effect, absolute and relative, with its adjusted p-value."""
    e = r.effect
    rel = f" ({e.relative * 100:+.2f}%)" if e.relative is not None else ""
    return f"{_num(e.absolute)}{rel}, {p_text(r.p_value_adjusted)}"


def _power_text(plan: Mapping[str, Any]) -> str:
    """Return "; power so far 43%" for a plan that knows it, else ""."""
    p = plan.get("power_now")
    return "" if p is None else f"; power so far {p:.0%}"


def _split(j: Judgement) -> str:
    total_w = sum(j.weights.values()) or 1.0
    return ", ".join(f"{a} {j.units.get(a, 0):,} ({j.weights.get(a, 0) / total_w:.0%} expected)" for a in j.weights)


def _srm(f: Finding, j: Judgement) -> str:
    t = f.srm
    assert t is not None
    if t.method == "arm_counts":
        return f"arm(s) {', '.join(t.arms)} got fewer than 2 units, or units despite a weight of 0 ({_split(j)})"
    return f"sample ratio mismatch, {t.method} {p_text(t.p_value)} ({_split(j)})"


def _broken(f: Finding, j: Judgement) -> str:
    return (f"{f.data['multi_arm_units']:,} units were seen in several arms (over "
            f"{BROKEN_ASSIGNMENT_SHARE:.0%} of units): assignment is not sticky")


def _row(f: Finding) -> MetricResult:
    assert f.result is not None
    return f.result


def _unproven(f: Finding, j: Judgement) -> str:
    if f.result is None:
        return f"guardrail {f.metric} not testable for {f.arm} ({f.why})"
    r = _row(f)
    why = (r.guardrail.reason if r.guardrail else None) or harm_text(r)
    return f"guardrail {f.metric} not yet shown non-inferior for {f.arm} ({why}{_power_text(f.data)})"


def _better(f: Finding, j: Judgement) -> str:
    if j.decision == "ship":
        return f"primary {f.metric} better for {f.arm}: {effect_text(_row(f))}"
    return f"primary {f.metric} better for {f.arm} ({effect_text(_row(f))}), but not yet shippable"


def _min_sample(f: Finding, j: Judgement) -> str:
    short = ", ".join(f"{a} {j.units.get(a, 0)}" for a in f.data["missing_units"])
    return f"below the minimum sample of {f.data['min_units_per_arm']} units per arm ({short})"


def _segment(f: Finding, j: Judgement) -> str:
    d = f.data
    what = "breached its margin" if f.code == "segment_guardrail_breached" else "worse"
    kind = "guardrail" if f.code == "segment_guardrail_breached" else "primary"
    return (f"{kind} {f.metric} {what} for {f.arm} among {d['dimension']} = {d['value']} ({_num(d['effect'])}, "
            f"adjusted {p_text(d['p_value_adjusted'])}, {d['units']:,} units)")


_MESSAGES: dict[str, Callable[[Finding, Judgement], str]] = {
    "srm": _srm,
    "broken_assignment": _broken,
    "guardrail_breached": lambda f, j: f"guardrail {f.metric} breached for {f.arm}: {harm_text(_row(f))}",
    "primary_worse": lambda f, j: f"primary {f.metric} worse for {f.arm}: {effect_text(_row(f))}",
    "guardrail_unproven": _unproven,
    "secondary_worse": lambda f, j: f"secondary {f.metric} worse for {f.arm}: {effect_text(_row(f))}",
    "primary_better": _better,
    "primary_untestable": lambda f, j: f"primary {f.metric} not testable for {f.arm} ({f.why})",
    "primary_inconclusive": lambda f, j: (f"primary {f.metric} not yet significant for {f.arm} "
                                          f"({effect_text(_row(f))}{_power_text(f.data)})"),
    "no_primary": lambda f, j: "no metric has role: primary, so nothing can ship",
    "min_sample": _min_sample,
    "segment_guardrail_breached": _segment,
    "segment_primary_worse": _segment,
}


def message(f: Finding, j: Judgement) -> str:
    """Return one finding in words, as it reads in the judgement it belongs to."""
    return _MESSAGES[f.code](f, j)


def _plan(j: Judgement) -> str:
    if j.units_more is None:
        return " Reaching 80% power on what is missing is out of reach at the planned effects (or unknown)."
    if j.days is None:
        return f" About {j.units_more:,} more units reach 80% power on what is missing."
    return (f" About {j.units_more:,} more units, {math.ceil(j.days)} more days at the current "
            f"{j.units_per_day:,.0f} units a day, reach 80% power on what is missing.")


def sentence(j: Judgement) -> tuple[str, str]:
    """Return the verdict's sentence and its last part, what reaching the planned power takes ("" when
    the decision needs no plan)."""
    said = "; ".join(message(f, j) for f in j.findings)
    tail = "".join(f" {m[:1].upper()}{m[1:]}." for m in (message(n, j) for n in j.notes))
    if j.decision == "invalid":
        return ("Invalid: " + said + ". Assignment or logging is broken: no result of this experiment can be "
                "trusted."), ""
    if j.decision == "roll_back":
        return "Roll back: " + said + "." + tail, ""
    if j.decision == "ship":
        also = f" (also qualifying: {', '.join(j.also_qualifying)})" if j.also_qualifying else ""
        names = ", ".join(f"{f.metric} ({effect_text(_row(f))})" for f in j.findings)
        guard = (f"; every guardrail non-inferior ({', '.join(j.guardrails)})" if j.guardrails
                 else "; no guardrail is configured")
        return f"Ship {j.arm}{also}: better on {names}, no primary worse{guard}." + tail, ""
    plan = _plan(j)
    head = ("Keep running: " + said + ".") if j.findings else "Keep running:"
    return head + tail + plan, plan.strip()


def at_time(since: str, word: str = "at") -> str:
    """Return " at 2026-12-05 20:43 UTC" for an ISO time, or "" when the time is not known."""
    return f" {word} {since[:16].replace('T', ' ')} UTC" if since else ""


def which_test_acted(ev: dict[str, Any] | None) -> str | None:
    """Return, in one sentence, which of the guard's tests acted and why the report's may still differ."""
    if not ev:
        return None
    if ev.get("test") == "failures":
        return _failures_acted(ev)
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


def _failures_acted(ev: dict[str, Any]) -> str:
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

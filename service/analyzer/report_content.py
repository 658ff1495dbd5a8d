"""What the report says, whatever its format: the summary lines, banners, metric sections (title, header,
rows, note), the vocabulary, the sequential design and the power line, from a :class:`.report.Report`."""

from __future__ import annotations

from typing import Any

from splitwatch.stats import ROLES, MetricResult, Reason, Verdict

from .kpi_queries import unit_definition
from .report import Report
from .report_format import fmt_chance, fmt_count, fmt_interval, fmt_margin, fmt_n, fmt_num, fmt_p
from .report_holdout import holdout_banner, holdout_line
from .report_interactions import interaction_banners
from .report_serving import serving_lines


def power_line(v: Verdict) -> str | None:
    """Return what reaching 80% power takes, naming the metrics that need it, or None (nothing to plan)."""
    if not v.units_to_power:
        return None
    needs: dict[str, int] = {}
    for r in v.reasons:
        more = r.data.get("more_units")
        if r.metric and more:
            needs[r.metric] = max(needs.get(r.metric, 0), int(more))
    days = f", about {v.days_to_power:.1f} more days at the current rate" if v.days_to_power else ""
    which = "; ".join(f"{m} {fmt_count(n)}" for m, n in sorted(needs.items(), key=lambda kv: -kv[1]))
    return (f"To reach 80% power: {fmt_count(v.units_to_power)} more units{days}"
            + (f" (more units each metric needs: {which})" if which else "") + ".")

def acted_on(rep: Report) -> Reason | None:
    """Return the verdict's reason that says which of the guard's tests acted (its ``data["test"]``:
    ``failures``, ``guardrail``, ``srm``), or None."""
    return next((r for r in (rep.verdict.reasons if rep.verdict else []) if r.code == "acted_on"), None)

def metric_vocabulary(rep: Report) -> list[dict[str, Any]]:
    """Return each metric's role, unit-level definition and description, by role."""
    out = []
    for m in sorted(rep.data.metrics, key=lambda m: ROLES.index(m.role)):
        definition = unit_definition(m, rep.analyzer)
        cap = rep.data.caps.get(m.name)
        if cap is not None and m.cap is not None:
            what = "each unit's value" if m.kind == "continuous" else "each unit's numerator"
            at = (f"the {m.cap.quantile:g} quantile of all units" if m.cap.quantile is not None
                  else "the configured value")
            definition += f"; {what} capped at {cap:.6g} ({at})"
        if rep.data.history_share.get(m.name, 0) > 0:
            definition += (f"; the effect adjusted for the unit's own value in the {rep.analyzer.cuped.lookback_days:g}"
                           " days before its first exposure (CUPED; units without history keep theirs)")
        elif m.name in rep.data.history_share:
            definition += "; not adjusted: no unit has pre-period data (CUPED)"
        censored = rep.data.censored.get(m.name)
        if censored:
            definition += (f"; {censored:,} user{'s' if censored != 1 else ''} left out: their window ends after "
                           "the data")
        out.append({"metric": m.name, "role": m.role, "kind": m.kind, "direction": m.direction,
                    "definition": definition, "description": m.description,
                    "margin": m.margin, "relative_margin": m.relative_margin if m.guardrail else None,
                    "mde": m.mde, "cap": m.cap.model_dump() if m.cap else None, "cap_value": cap,
                    "censored_units": rep.data.censored.get(m.name)})
    return out



def design_of(rep: Report) -> dict[str, Any]:
    """Return the sequential design the report's tests used: the mixture with its n_star (and where it
    came from), or the group design with its plan and this look; fixed horizon when not sequential."""
    exp, a = rep.experiment, rep.analyzer
    if not rep.sequential:
        return {"design": "fixed_horizon"}
    o = rep.result.options if rep.result is not None else None
    if o is not None and o.group is not None:
        units = sum(rep.data.units.values())
        fractions = o.group.fractions(units, o.earlier_looks)
        return {"design": "group", "spending": o.group.spending, "planned_units": o.group.planned_units,
                "planned_looks": o.group.looks, "look": len(fractions), "information_fraction": fractions[-1],
                "boundary_z": o.group.bound(units, o.alpha / 2, o.earlier_looks),
                "guardrail_boundary_z": o.group.bound(units, o.guardrail_alpha, o.earlier_looks)}
    source = ("the plan's n_star" if exp.plan is not None and exp.plan.n_star else
              "the plan's units (units_per_day x days)" if exp.plan is not None else "analyzer.sequential_n_star")
    return {"design": "mixture", "n_star": o.n_star if o is not None else a.sequential_n_star, "n_star_from": source}

def _validity(rep: Report) -> str:
    """Return when the report's intervals hold: under continuous monitoring, or at the planned looks."""
    if not rep.sequential:
        return ""
    return ", valid at the planned looks" if design_of(rep)["design"] == "group" else \
        ", valid under continuous monitoring"

def design_line(rep: Report) -> str:
    """Return the design in one line, for the summary."""
    d = design_of(rep)
    if d["design"] == "fixed_horizon":
        return "Tests: fixed horizon (valid once, at the planned sample size)"
    if d["design"] == "group":
        return (f"Tests: group-sequential ({d['spending'].replace('_', '-')} spending), look {d['look']} of "
                f"{d['planned_looks']} planned, at {d['information_fraction']:.0%} of the planned "
                f"{fmt_count(d['planned_units'])} units; boundary z {d['boundary_z']:.3f} (two-sided), "
                f"{d['guardrail_boundary_z']:.3f} for guardrails; valid at the planned looks")
    return (f"Tests: always-valid normal mixture, n_star {fmt_count(d['n_star'])} ({d['n_star_from']}); "
            "valid at every look")

def _harm(r: MetricResult) -> str:
    g = r.guardrail
    if g is None:
        return ""
    return f"{fmt_interval(g.harm, g.lower, g.upper, percent=g.relative)} vs margin {fmt_margin(g.margin, g.relative)}"

def _row(rep: Report, r: MetricResult) -> list[str]:
    values = [r.metric, r.arm, fmt_num(r.control.estimate), fmt_num(r.treatment.estimate),
              fmt_n(r.control.n, r.treatment.n)]
    if r.role == "guardrail":
        return [*values, _harm(r), r.guardrail.status.replace("_", " ") if r.guardrail else "n/a"]
    effects = [fmt_interval(r.effect.absolute, *r.effect.absolute_ci),
               fmt_interval(r.effect.relative, *(r.effect.relative_ci or (None, None)), percent=True),
               fmt_p(r.p_value)]
    if r.role == "diagnostic":
        return [*values, *effects, r.decision]
    return [*values, *effects, fmt_p(r.p_value_adjusted), fmt_chance(r.bayesian.chance_to_win), r.decision,
            _cuped(rep, r)]

def _cuped(rep: Report, r: MetricResult) -> str:
    """Return the variance reduction of a CUPED-adjusted metric, and the share of units with history."""
    share = rep.data.history_share.get(r.metric)
    if share == 0:
        return "no pre-period data (not adjusted)"
    if r.variance_reduction is None or share is None:
        return "-"
    return f"{r.variance_reduction * 100:.0f}% ({share * 100:.0f}% of units with history)"

_VALUES = ["metric", "arm", "control", "treatment", "n (control / treatment)"]

_EFFECTS = ["absolute effect [CI]", "relative effect [CI]", "p"]

HEADERS = {"primary": [*_VALUES, *_EFFECTS, "p adjusted", "chance to win", "decision", "variance reduction (CUPED)"],
           "secondary": [*_VALUES, *_EFFECTS, "p adjusted", "chance to win", "decision",
                         "variance reduction (CUPED)"],
           "guardrail": [*_VALUES, "harm [one-sided bounds] vs margin", "status"],
           "diagnostic": [*_VALUES, *_EFFECTS, "decision (unadjusted)"]}

TITLES = {"primary": "Primary metrics (decide the verdict)",
          "secondary": "Secondary metrics (reported; a worse one is named in the verdict)",
          "guardrail": "Guardrails (non-inferiority against their margin)",
          "diagnostic": "Diagnostics (shown only; not adjusted, not in the verdict)"}

def sections(rep: Report) -> list[tuple[str, list[str], list[list[str]], str]]:
    """Return (title, header, rows, note) for each role that has metrics."""
    res = rep.result
    o = res.options if res is not None else None
    out = []
    for role in ROLES:
        rows = [_row(rep, r) for r in (res.results if res else []) if r.role == role]
        if not rows:
            continue
        note = ""
        if o is not None and role in ("primary", "secondary"):
            note = (f"Two-sided tests at alpha {o.alpha:g}, {o.correction} correction within the {role} family; "
                    f"the {o.decision_scale} scale decides. A CI excludes 0 exactly when its p < alpha.")
            if any(r.variance_reduction is not None and rep.data.history_share.get(r.metric, 0) > 0
                   for r in res.results if r.role == role):
                note += (f" Effects are adjusted for each unit's own value in the {rep.analyzer.cuped.lookback_days:g}"
                         " days before its first exposure (CUPED); the arms' values are unadjusted.")
        elif o is not None and role == "guardrail":
            note = (f"Harm bounds are one-sided at {o.guardrail_alpha:g} each (a "
                    f"{round(100 * (1 - 2 * o.guardrail_alpha))}% interval"
                    f"{_validity(rep)}); non-inferior when the "
                    f"upper bound is below the margin, breached when the lower bound is above it; at least "
                    f"{o.min_units_per_arm} units per arm.")
        methods = sorted({(r.guardrail.method if r.guardrail and role == "guardrail" else r.method)
                          for r in (res.results if res else []) if r.role == role})
        note = f"{note} Method: {', '.join(methods)}.".strip()
        acted = acted_on(rep)
        if acted is not None and acted.data.get("test") == "failures" and any(
                r.metric == "error_rate" for r in (res.results if res else []) if r.role == role):
            note += f" {acted.message}."
        out.append((TITLES[role], HEADERS[role], rows, note))
    return out

def summary_lines(rep: Report) -> list[str]:
    d, res = rep.data, rep.result
    tests = "always-valid sequential tests" if rep.sequential else "fixed-horizon tests"
    lines = [f"Experiment {rep.experiment.key}, phase {rep.experiment.phase}, units first exposed "
             f"{rep.start} to {rep.end} ({tests})",
             design_line(rep),
             "Units per arm: " + ", ".join(f"{a} {fmt_count(n)}" for a, n in sorted(d.units.items())),
             "Requests per arm: " + ", ".join(f"{a} {fmt_count(n)}" for a, n in sorted(d.requests.items()))]
    for t in res.srm_tests if res is not None else ():
        what = {"chi_square": "Sample ratio, chi-square over the period",
                "arm_counts": "Sample ratio, every arm with a weight has units"}.get(
            t.method, "Sample ratio, sequential (valid when watched)")
        value = "" if t.method == "arm_counts" else f"p = {fmt_p(t.p_value)}, "
        lines.append(f"{what}: {value}{'MISMATCH' if t.mismatch else 'ok'}")
    if rep.holdout is not None:
        lines.append(holdout_line(rep.holdout))
    if rep.serving is not None and rep.serving.prometheus is not None:  # configured: figures, or why none
        lines += serving_lines(rep.serving)
    crossed = (f", {d.holdout_crossed_units} units held out at another time" if d.holdout_crossed_units else "")
    lines.append(f"Excluded: {d.multi_arm_units} units seen in several arms{crossed}, {d.forced_requests} forced "
                 "requests; "
                 f"outcomes: {d.orphan_outcomes} of units never exposed, {d.forced_only_outcomes} of units only "
                 f"served by forced requests, {d.early_outcomes} before the unit's first exposure, "
                 f"{d.late_outcomes} after its attribution window")
    for m, why in d.skipped.items():
        lines.append(f"Not computed: {m} ({why})")
    for m, why in (res.skipped.items() if res is not None else ()):
        lines.append(f"Not testable: {m} ({why})")
    if rep.timeline:
        last = rep.timeline[-1]
        lines.append(f"Rollout: {last['status']} at coverage {last['coverage']:.4g} since {last['ts'][:16]} UTC "
                     f"({last['action']} by {last['actor']}: {last['reason']}); {len(rep.timeline)} changes in "
                     "the phase, listed under Rollout timeline")
    return lines

def banners(rep: Report) -> list[tuple[str, str]]:
    """Return the warnings to show above the results, as (level, text): level ``error`` or ``warning``."""
    d, res = rep.data, rep.result
    out: list[tuple[str, str]] = []
    if res is not None and res.srm_mismatch:
        failed = ", ".join(t.method for t in res.srm_tests if t.mismatch)
        out.append(("error", f"Sample ratio mismatch ({failed}): units are not split as the weights say. "
                             "Assignment or logging is broken; no result below can be trusted until it is fixed."))
    held = holdout_banner(rep)
    if held is not None:
        out.append(held)
    out += interaction_banners(rep)
    total = sum(d.units.values()) or 1
    quality = [(d.multi_arm_units, "units seen in several arms (excluded)", total),
               (d.orphan_outcomes, "outcomes of units never exposed", None),
               (d.early_outcomes, "outcomes before the unit's first exposure", None),
               (d.late_outcomes, "outcomes after the attribution window", None),
               (d.forced_only_outcomes, "outcomes of units only served by forced requests", None)]
    parts = [f"{fmt_count(n)} {what}" + (f" ({n / base:.1%} of units)" if base else "")
             for n, what, base in quality if n]
    if parts:
        out.append(("warning", "Data quality: " + "; ".join(parts) + ". See the exclusions below."))
    return out

def vocabulary_lines(rep: Report) -> list[str]:
    out = []
    for m in metric_vocabulary(rep):
        d = (m["description"] or "").rstrip(".")
        extra = f" {d[:1].upper()}{d[1:]}." if d else ""
        out.append(f"{m['metric']} ({m['role']}, {m['direction']} is better): {m['definition']}.{extra}")
    return out

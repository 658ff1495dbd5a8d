"""What the report says about segments, for every format: the note, one table per dimension, the
heterogeneity lines, and the JSON (docs/segments.md)."""

from __future__ import annotations

from typing import Any

from .report import Report
from .report_format import fmt_interval, fmt_n, fmt_num, fmt_p
from .segments import SegmentAnalysis, SegmentResult

SEGMENT_HEADER = ["segment", "metric", "arm", "units (control / arm)", "control", "arm value",
                  "effect, or guardrail harm [interval agreeing with the adjusted p]", "adjusted p", "finding"]
SCOPE_WORDS = {"per_dimension": "within each dimension's values of each metric",
               "per_metric": "within each metric, across every dimension's values",
               "global": "across every segment result of the report"}


def segment_note(seg: SegmentAnalysis) -> str:
    """Return how the segments were made and tested, in words."""
    scale = "relative" if seg.decision_scale == "relative" else "absolute"
    decides = ("a segment's breached guardrail or worse primary rolls back (analyzer.segments.affect_verdict)"
               if seg.affect_verdict else
               "segments never change the verdict: a breached guardrail or a worse primary in one is named in it")
    return (f"Each user is counted in the segment of their first request. Primaries: the {scale} effect, "
            f"two-sided; its interval excludes 0 exactly when its adjusted p < {seg.alpha:g}. Guardrails: the "
            f"harm, one-sided against the margin; breached when the adjusted p of harm beyond the margin is "
            f"below {seg.guardrail_alpha:g}, exactly when the interval's lower bound is above the margin. "
            f"{seg.method} correction {SCOPE_WORDS[seg.scope]} ({seg.scope}), primaries and guardrails in one "
            f"family. Heterogeneity: Cochran's Q over the tested segments (does the effect differ between "
            f"them?). The {decides}.")


def _finding(r: SegmentResult) -> str:
    return r.why if r.status != "tested" else (r.decision or r.why or "not testable")


def segment_rows(seg: SegmentAnalysis, dimension: str) -> list[list[str]]:
    """Return one dimension's table rows."""
    percent = seg.decision_scale == "relative"
    out = []
    for r in seg.results:
        if r.dimension != dimension:
            continue
        res = r.result
        lo, hi = r.interval or (None, None)
        relative = percent if r.role != "guardrail" else bool(res and res.guardrail and res.guardrail.relative)
        out.append([r.value, r.metric, r.arm, fmt_n(r.control_units, r.treatment_units),
                    fmt_num(res.control.estimate) if res else "-", fmt_num(res.treatment.estimate) if res else "-",
                    fmt_interval(r.effect, lo, hi, percent=relative) if r.interval else "-",
                    fmt_p(r.p_adjusted) if r.p_adjusted is not None else "-", _finding(r)])
    return out


def heterogeneity_lines(seg: SegmentAnalysis) -> list[str]:
    """Return one line per dimension, metric and arm: does the effect differ between the segments?"""
    out = []
    for h in seg.heterogeneity:
        differs = "the effect differs between them" if h.p_value < seg.alpha else "no evidence that it differs"
        out.append(f"{h.metric} for {h.arm} by {h.dimension}: Q = {h.q:.3g} on {h.df} df over {h.segments} "
                   f"segments, p {fmt_p(h.p_value)}: {differs}")
    return out


def segments_json(rep: Report) -> dict[str, Any] | None:
    """Return the segments as JSON-ready data (None when the report has none)."""
    seg = rep.segments
    if seg is None:
        return None
    return {
        "dimensions": seg.dimensions, "correction_scope": seg.scope, "correction": seg.method, "alpha": seg.alpha,
        "scale": seg.decision_scale, "affect_verdict": seg.affect_verdict, "units": seg.units,
        "results": [{
            "dimension": r.dimension, "segment": r.value, "metric": r.metric, "role": r.role, "arm": r.arm,
            "status": r.status, "control_units": r.control_units, "treatment_units": r.treatment_units,
            "control_value": r.result.control.estimate if r.result else None,
            "treatment_value": r.result.treatment.estimate if r.result else None,
            "test": "breach" if r.role == "guardrail" else "effect", "estimate": r.effect,
            "interval": list(r.interval) if r.interval else None, "p_value": r.p_value,
            "p_value_adjusted": r.p_adjusted, "decision": r.decision, "breached": r.breached,
            "why": r.why or None} for r in seg.results],
        "heterogeneity": [{"dimension": h.dimension, "metric": h.metric, "arm": h.arm, "q": h.q, "df": h.df,
                           "p_value": h.p_value, "segments": h.segments} for h in seg.heterogeneity]}

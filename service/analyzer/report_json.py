"""The report as JSON: everything the pages show, as data (strict JSON: an undefined number is null)."""

from __future__ import annotations

import json
from typing import Any

from splitwatch.stats import ExperimentResult, json_safe

from .report import Report
from .report_content import banners, design_of, metric_vocabulary
from .report_holdout import holdout_json
from .report_interactions import interactions_json
from .report_segments import segments_json
from .report_serving import serving_json


def _srm_dict(res: ExperimentResult | None) -> dict[str, Any] | None:
    if res is None or not res.srm_tests:
        return None
    out: dict[str, Any] = {"mismatch": res.srm_mismatch}
    for t in res.srm_tests:
        name = "sequential" if t.method.startswith("dirichlet") else t.method
        out[name] = {"p_value": t.p_value, "mismatch": t.mismatch, "method": t.method, "expected": t.expected,
                     **({"arms": t.arms} if t.method == "arm_counts" else {})}
    return out

def to_dict(rep: Report) -> dict[str, Any]:
    """Return the report as JSON-ready data."""
    d, res = rep.data, rep.result
    o = res.options if res is not None else None
    out: dict[str, Any] = {
        "experiment": rep.experiment.key, "phase": rep.experiment.phase, "from": rep.start.isoformat(),
        "to": rep.end.isoformat(), "method": "always-valid (sequential)" if rep.sequential else "fixed horizon",
        "alpha": o.alpha if o else None, "correction": o.correction if o else None,
        "decision_scale": o.decision_scale if o else None, "sequential_design": design_of(rep),
        "guardrail_alpha_one_sided": o.guardrail_alpha if o else None,
        "min_units_per_arm": o.min_units_per_arm if o else None,
        "units": d.units, "requests": d.requests, "excluded": {
            "units_in_several_arms": d.multi_arm_units, "orphan_outcomes": d.orphan_outcomes,
            "forced_only_outcomes": d.forced_only_outcomes, "early_outcomes": d.early_outcomes,
            "late_outcomes": d.late_outcomes, "forced_requests": d.forced_requests,
            "holdout_units": d.holdout_units, "units_held_out_at_another_time": d.holdout_crossed_units},
        "skipped_metrics": {**d.skipped, **(res.skipped if res is not None else {})},
        "verdict": rep.verdict.as_dict() if rep.verdict else None, "srm": _srm_dict(res),
        "banners": [{"level": level, "text": text} for level, text in banners(rep)],
        "metrics": metric_vocabulary(rep), "drift": rep.drift, "answers": rep.answers, "shadow": rep.shadow,
        "timeline": rep.timeline, "segments": segments_json(rep), "holdout": holdout_json(rep),
        "interactions": interactions_json(rep), "serving": serving_json(rep), "results": []}
    for r in res.results if res else []:
        g = r.guardrail
        out["results"].append({
            "metric": r.metric, "role": r.role, "kind": r.kind, "arm": r.arm, "control": r.control.arm,
            "control_value": r.control.estimate, "treatment_value": r.treatment.estimate,
            "control_n": r.control.n, "treatment_n": r.treatment.n,
            "absolute_effect": r.effect.absolute, "absolute_ci": list(r.effect.absolute_ci),
            "p_value_absolute": r.effect.p_value,
            "relative_effect": r.effect.relative,
            "relative_ci": list(r.effect.relative_ci) if r.effect.relative_ci else None,
            "p_value_relative": r.effect.relative_p_value,
            "p_value": r.p_value, "p_value_adjusted": r.p_value_adjusted, "method": r.method,
            "decision": r.decision, "chance_to_win": r.bayesian.chance_to_win,
            "variance_reduction": r.variance_reduction,
            "history_share": rep.data.history_share.get(r.metric),
            "guardrail": None if g is None else {
                "status": g.status, "margin": g.margin, "relative": g.relative, "harm": g.harm,
                "harm_lower": g.lower, "harm_upper": g.upper, "alpha_one_sided": g.alpha, "method": g.method,
                "reason": g.reason},
            "series": [p.__dict__ for p in rep.series.get((r.metric, r.arm), [])]})
    return out

def to_json(rep: Report) -> str:
    """Return the report as JSON text (strict: an undefined or infinite number is null)."""
    return json.dumps(json_safe(to_dict(rep)), indent=2, default=str, allow_nan=False)

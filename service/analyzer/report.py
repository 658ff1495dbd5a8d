"""``splitwatch report``: the weekly KPI significance report, as Markdown, self-contained HTML or JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import duckdb

from splitwatch.stats import (
    ROLES,
    ExperimentResult,
    MetricResult,
    Reason,
    StateInForce,
    Verdict,
    decide,
    json_safe,
    with_state,
)
from splitwatch.stats.verdict import CONFIGURED_PAUSE

from ..config import AnalyzerConfig, Config, ExperimentConfig
from .analysis import analyze_data
from .engines import attach_lake, connect
from .kpi_queries import ExperimentData, has_column, load_experiment, prepare_events, unit_definition
from .lake import Lake
from .report_format import fmt_chance, fmt_count, fmt_interval, fmt_margin, fmt_n, fmt_num, fmt_p, md_table
from .rollups import Rollups
from .shadow_stats import shadow_summaries


def last_full_iso_week(today: date | None = None) -> tuple[date, date]:
    """Return (Monday, Sunday) of the last complete ISO week before ``today``."""
    today = today or datetime.now(UTC).date()
    this_monday = today - timedelta(days=today.weekday())
    return this_monday - timedelta(days=7), this_monday - timedelta(days=1)


def exposure_days(cfg: Config, key: str) -> tuple[date, date] | None:
    """Return the first and last day with exposures of the experiment's current phase, or None (no data)."""
    exp = cfg.experiment(key)
    lake = Lake(cfg.analyzer.lake_dir)
    if exp is None or not lake.has_files(key):
        return None
    if cfg.analyzer.rollups:  # the rollups' index knows every unit's first exposure
        rollups = Rollups(lake, exp, cfg.analyzer)
        rollups.refresh()
        return rollups.first_exposures()
    con = duckdb.connect()
    attach_lake(con, lake)
    try:
        first, last = con.execute(
            "SELECT min(ts), max(ts) FROM read_parquet(?, union_by_name = true) "
            "WHERE type = 'exposure' AND phase = ? AND NOT coalesce(forced, false)", [lake.glob(key), exp.phase]
        ).fetchone()
    finally:
        con.close()
    return None if first is None else (first.astimezone(UTC).date(), last.astimezone(UTC).date())


def _day_start(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


@dataclass
class SeriesPoint:
    """A metric's cumulative relative effect at the end of one day."""

    day: str
    relative: float | None
    low: float | None
    high: float | None


@dataclass
class Report:
    """Everything the report shows, independent of its format."""

    experiment: ExperimentConfig
    start: date
    end: date
    data: ExperimentData
    result: ExperimentResult | None
    sequential: bool
    series: dict[tuple[str, str], list[SeriesPoint]] = field(default_factory=dict)
    verdict: Verdict | None = None
    analyzer: AnalyzerConfig = field(default_factory=AnalyzerConfig)
    drift: list[dict[str, Any]] = field(default_factory=list)  # drift events of the period, in time order
    # each arm's answers per day (output drift): responses, median tokens, refusal/empty/truncated shares
    answers: list[dict[str, Any]] = field(default_factory=list)
    # the phase's state changes (ramp steps, pauses, resumes) up to the period's end, in order
    timeline: list[dict[str, Any]] = field(default_factory=list)
    # shadow traffic: each candidate's paired figures against the control (shadow_stats)
    shadow: list[dict[str, Any]] = field(default_factory=list)


def _progress(i: int, total: int, label: str) -> None:
    if sys.stderr.isatty() or total > 1:
        bar = "#" * int(30 * i / total)
        print(f"\r{label} [{bar:<30}] {i}/{total}", end="" if i < total else "\n", file=sys.stderr, flush=True)


def build_report(cfg: Config, key: str, start: date, end: date, sequential: bool = True,
                 progress: bool = True) -> Report:
    """Return the report of experiment ``key`` for units first exposed from ``start`` to ``end`` (inclusive).

    The KPI SQL runs on ``cfg.analyzer.engine`` (DuckDB, or Spark with ``cfg.analyzer.spark``)."""
    exp = cfg.experiment(key)
    if exp is None:
        raise ValueError(f"no experiment {key!r} in the config; experiments: {[e.key for e in cfg.experiments]}")
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    lake = Lake(cfg.analyzer.lake_dir)
    rollups = Rollups(lake, exp, cfg.analyzer) if cfg.analyzer.rollups else None
    if rollups is not None:
        rollups.refresh()  # what changed since the last refresh (docs/analyzer.md, "Daily rollups")
    spark = cfg.analyzer.spark
    con = connect(cfg.analyzer.engine, spark.master, spark.conf)
    attach_lake(con, lake)
    period = (_day_start(start), _day_start(end + timedelta(days=1)))
    try:
        days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
        series: dict[tuple[str, str], list[SeriesPoint]] = {}
        data = result = None
        if rollups is not None:  # the period's files and its units' rollups, not the whole lake
            rollups.prepare(con, *period)
            files: str | list[str] = rollups.period_files(*period)
        else:
            prepare_events(con, lake.glob(key), exp.phase, lake.glob("*") if cfg.analyzer.cuped.enabled else None,
                           key)
            files = lake.glob(key)
        drift = _drift_events(con, start, end)
        answers = _answers(con, start, end)
        timeline = _timeline(con, end)
        shadow = shadow_summaries(con, *period, cfg.analyzer.alpha, files)
        looks: list[int] = []  # units at the end of each earlier day: a group design's looks so far
        for i, day in enumerate(days, 1):
            data = load_experiment(con, None, exp, cfg.analyzer, _day_start(start),
                                   _day_start(day + timedelta(days=1)))
            result = analyze_data(data, exp, cfg.analyzer, sequential, tuple(looks))
            looks.append(sum(data.units.values()))
            for r in result.results if result else []:
                series.setdefault((r.metric, r.arm), []).append(SeriesPoint(
                    day.isoformat(), r.effect.relative, *(r.effect.relative_ci or (None, None))))
            if progress:
                _progress(i, len(days), f"report {key}")
    finally:
        con.close()
    assert data is not None and result is not None
    rep = Report(exp, start, end, data, result, sequential, series, drift=drift, analyzer=cfg.analyzer,
                 timeline=timeline, answers=answers, shadow=shadow)
    rep.verdict = verdict(rep)
    return rep


def _drift_events(con: duckdb.DuckDBPyConnection, start: date, end: date) -> list[dict[str, Any]]:
    """Return the drift detector's verdict changes in the period (from the ``ev`` table)."""
    if not has_column(con, "detector"):
        return []
    changes = "changes" if has_column(con, "changes") else "NULL"
    rows = con.execute(
        f"SELECT ts, coalesce(arm, 'all'), detector, detected, drifted_features, {changes} FROM ev "
        "WHERE type = 'drift' AND ts >= ? AND ts < ? ORDER BY ts",
        [_day_start(start), _day_start(end + timedelta(days=1))]).fetchall()
    return [{"ts": ts.isoformat(), "arm": arm, "detector": det, "detected": bool(hit),
             "features": json.loads(feats) if feats else [], "changes": json.loads(ch) if ch else []}
            for ts, arm, det, hit, feats, ch in rows]


def _answers(con: duckdb.DuckDBPyConnection, start: date, end: date) -> list[dict[str, Any]]:
    """Return each arm's successful answers per day: count, median completion tokens, and the shares of
    refusals, empty and truncated answers (the shipper's ``answer`` features; docs/drift.md)."""
    if not has_column(con, "answer") or not has_column(con, "status_code"):
        return []
    rows = con.execute(
        "SELECT arm, CAST(ts AS DATE) AS day, count(*), median(completion_tokens), "
        "avg(CAST(json_extract(answer, '$.refusal') AS DOUBLE)), avg(CAST(json_extract(answer, '$.empty') AS DOUBLE)), "
        "avg(CASE WHEN finish_reason = 'length' THEN 1.0 ELSE 0.0 END) "
        "FROM ev WHERE type = 'response' AND status_code < 400 AND error IS NULL AND NOT coalesce(forced, false) "
        "AND ts >= ? AND ts < ? GROUP BY ALL ORDER BY arm, day",
        [_day_start(start), _day_start(end + timedelta(days=1))]).fetchall()
    return [{"arm": arm, "day": day.isoformat(), "answers": int(n), "median_tokens": tokens, "refusal_share": refusal,
             "empty_share": empty, "truncated_share": truncated}
            for arm, day, n, tokens, refusal, empty, truncated in rows]


def answer_rows(rep: Report) -> list[list[str]]:
    """Return the answers table's rows: each arm's answers per day."""
    def share(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    return [[a["arm"], a["day"], fmt_count(a["answers"]),
             "-" if a["median_tokens"] is None else f"{a['median_tokens']:g}", share(a["refusal_share"]),
             share(a["empty_share"]), share(a["truncated_share"])] for a in rep.answers]


SHADOW_HEADER = ["candidate", "pairs", "latency p50 control / candidate (ms)", "latency difference (ms)", "p",
                 "completion tokens difference", "errors control / candidate", "p", "similarity p50 [p10, p90]",
                 "length ratio p50", "refused (candidate only)", "broke JSON"]
SHADOW_NOTE = ("Shadow traffic: the control's requests mirrored to the candidate, compared pair by pair (candidate "
               "minus control; latency: Wilcoxon signed-rank, interval of the mean difference by bootstrap; tokens: "
               "paired bootstrap; errors: exact McNemar). Similarity: chrF of the candidate's answer against the "
               "control's (0-100). Users saw only the control's answers.")


SHADOW_CATEGORY_HEADER = ["candidate", "prompt language", "pairs", "similarity p50", "length ratio p50",
                          "p (lower than the other languages)", "differs"]


def shadow_category_rows(rep: Report) -> list[list[str]]:
    """Return the shadow breakdown's rows: per candidate and prompt language."""
    return [[s["candidate"], c["category"], fmt_count(c["pairs"]), fmt_num(c["similarity_median"]),
             fmt_num(c["length_ratio_median"]), fmt_p(c.get("p_adjusted")),
             "yes" if c.get("differs") else ("no" if "differs" in c else "too few pairs")]
            for s in rep.shadow for c in s.get("categories", [])]


def shadow_rows(rep: Report) -> list[list[str]]:
    """Return the shadow table's rows: one per candidate."""
    rows = []
    for s in rep.shadow:
        lat, tok, err, sim = s["latency_ms"], s["completion_tokens"], s["error_rate"], s["similarity"]

        def diff(r: dict[str, Any]) -> str:
            return "n/a" if "difference" not in r else fmt_interval(r["difference"], r["low"], r["high"])

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        rows.append([
            s["candidate"], fmt_count(s["pairs"]),
            f"{fmt_num(lat.get('control_median'))} / {fmt_num(lat.get('shadow_median'))}", diff(lat),
            fmt_p(lat.get("p_value")), diff(tok),
            f"{pct(err.get('estimate_a'))} / {pct(err.get('estimate_b'))}", fmt_p(err.get("p_value")),
            "n/a" if sim is None else f"{fmt_num(sim['p50'])} [{fmt_num(sim['p10'])}, {fmt_num(sim['p90'])}]",
            fmt_num(s["length_ratio_median"]), pct(s["refused_only_candidate"]),
            "n/a" if not s["json_pairs"] else pct(s["broke_json"])])
    return rows


ANSWERS_HEADER = ["arm", "day", "answers", "median tokens", "refusals", "empty", "cut at the token limit"]
ANSWERS_NOTE = ("Successful answers of each arm. Refusals and empty answers are judged by the proxy's event "
                "shipper on the answer's start (English phrasings; the text is not kept). The drift detector "
                "tests each arm against its own first answers (`detector` = output in the drift timeline).")


def _timeline(con: duckdb.DuckDBPyConnection, end: date) -> list[dict[str, Any]]:
    """Return the phase's state changes (``control`` events) up to the period's end, oldest first."""
    if not has_column(con, "action"):
        return []
    rows = con.execute(
        "SELECT ts, action, status, coverage, actor, changed_by, reason, evidence FROM ev WHERE type = 'control' "
        "AND ts < ? ORDER BY revision, ts", [_day_start(end + timedelta(days=1))]).fetchall()
    return [{"ts": ts.isoformat(), "action": action, "status": status, "coverage": coverage, "actor": actor,
             "by": by, "reason": reason, "evidence": json.loads(evidence) if evidence else None}
            for ts, action, status, coverage, actor, by, reason, evidence in rows]


def timeline_rows(rep: Report) -> list[list[str]]:
    return [[e["ts"][:19].replace("T", " "), e["action"], e["status"], f"{e['coverage']:.4g}",
             e["actor"] + (f" ({e['by']})" if e["by"] else ""), e["reason"]] for e in rep.timeline]


TIMELINE_HEADER = ["time (UTC)", "action", "status", "coverage", "who", "why"]
DRIFT_HEADER = ["time (UTC)", "arms", "detector", "verdict", "features that moved"]


def drift_rows(rep: Report) -> list[list[str]]:
    """Return the drift timeline's rows: when the detector's verdict changed, and what moved (in words)."""
    return [[e["ts"][:19].replace("T", " "), e["arm"], e["detector"],
             "drift detected" if e["detected"] else "drift cleared",
             "; ".join(e.get("changes") or []) or ", ".join(e["features"]) or "-"]
            for e in rep.drift]


def state_in_force(rep: Report) -> StateInForce | None:
    """Return the phase's state at the period's end (its last control event), or None (never changed)."""
    if not rep.timeline:
        return CONFIGURED_PAUSE if rep.experiment.status == "paused" else None
    last = rep.timeline[-1]
    return StateInForce(last["status"], last["actor"], last["ts"], last["reason"], last["by"], last["evidence"])


def verdict(rep: Report) -> Verdict:
    """Return the verdict (ship, keep running, roll back, invalid) of the report's analysis, as it stands
    given the state in force (a rollback by the guard reads roll_back, done; stats.with_state)."""
    d, res = rep.data, rep.result
    assert res is not None
    days = max(1, (rep.end - rep.start).days + 1)
    total = sum(d.units.values())
    return with_state(decide(res, d.metrics, {a.name: d.units.get(a.name, 0) for a in rep.experiment.arms},
                             {a.name: a.weight for a in rep.experiment.arms}, rep.experiment.control.name,
                             units_per_day=total / days if total else None, multi_arm_units=d.multi_arm_units),
                      state_in_force(rep))


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
        out.append({"metric": m.name, "role": m.role, "kind": m.kind, "direction": m.direction,
                    "definition": definition, "description": m.description,
                    "margin": m.margin, "relative_margin": m.relative_margin if m.guardrail else None,
                    "mde": m.mde, "cap": m.cap.model_dump() if m.cap else None, "cap_value": cap})
    return out


# -- rendering ------------------------------------------------------------------------------------
def _srm_dict(res: ExperimentResult | None) -> dict[str, Any] | None:
    if res is None or not res.srm_tests:
        return None
    out: dict[str, Any] = {"mismatch": res.srm_mismatch}
    for t in res.srm_tests:
        name = "sequential" if t.method.startswith("dirichlet") else t.method
        out[name] = {"p_value": t.p_value, "mismatch": t.mismatch, "method": t.method, "expected": t.expected,
                     **({"arms": t.arms} if t.method == "arm_counts" else {})}
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
            "late_outcomes": d.late_outcomes, "forced_requests": d.forced_requests},
        "skipped_metrics": {**d.skipped, **(res.skipped if res is not None else {})},
        "verdict": rep.verdict.as_dict() if rep.verdict else None, "srm": _srm_dict(res),
        "banners": [{"level": level, "text": text} for level, text in banners(rep)],
        "metrics": metric_vocabulary(rep), "drift": rep.drift, "answers": rep.answers, "shadow": rep.shadow,
        "timeline": rep.timeline, "results": []}
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


def _sections(rep: Report) -> list[tuple[str, list[str], list[list[str]], str]]:
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


def _summary_lines(rep: Report) -> list[str]:
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
    lines.append(f"Excluded: {d.multi_arm_units} units seen in several arms, {d.forced_requests} forced requests; "
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


def _vocabulary_lines(rep: Report) -> list[str]:
    out = []
    for m in metric_vocabulary(rep):
        d = (m["description"] or "").rstrip(".")
        extra = f" {d[:1].upper()}{d[1:]}." if d else ""
        out.append(f"{m['metric']} ({m['role']}, {m['direction']} is better): {m['definition']}.{extra}")
    return out


def to_markdown(rep: Report) -> str:
    """Return the report as Markdown."""
    v = rep.verdict
    out = [f"# splitwatch report: {rep.experiment.key}: {v.headline if v else 'no verdict'}", ""]
    if v is None:
        out += ["**Verdict:** none", ""]
    elif v.reasons:  # the reasons are the sentence's parts: listed once, as a list
        out += [f"**Verdict: {v.headline}.**", ""] + [f"- {r.message}" for r in v.reasons]
        line = power_line(v)
        if line:
            out.append(f"- {line}")
        out.append("")
    else:
        out += [f"**Verdict: {v.headline}.** {v.sentence}", ""]
    for level, text in banners(rep):
        out += [f"> **{'Error' if level == 'error' else 'Warning'}:** {text}", ""]
    out += [f"- {line}" for line in _summary_lines(rep)]
    for title, header, rows, note in _sections(rep):
        out += ["", f"## {title}", ""]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        if note:
            out += ["", note]
    if rep.drift:
        out += ["", "## Drift timeline", "", "| " + " | ".join(DRIFT_HEADER) + " |", "|" + "---|" * len(DRIFT_HEADER)]
        out += ["| " + " | ".join(row) + " |" for row in drift_rows(rep)]
    if rep.answers:
        out += ["", "## Answers per arm", "", "| " + " | ".join(ANSWERS_HEADER) + " |",
                "|" + "---|" * len(ANSWERS_HEADER)]
        out += ["| " + " | ".join(row) + " |" for row in answer_rows(rep)] + ["", ANSWERS_NOTE]
    if rep.shadow:
        out += ["", "## Shadow traffic", "", *md_table(SHADOW_HEADER, shadow_rows(rep)), "", SHADOW_NOTE]
        if any(s.get("categories") for s in rep.shadow):
            out += ["", *md_table(SHADOW_CATEGORY_HEADER, shadow_category_rows(rep))]
    if rep.timeline:
        out += ["", "## Rollout timeline", "", "| " + " | ".join(TIMELINE_HEADER) + " |",
                "|" + "---|" * len(TIMELINE_HEADER)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in timeline_rows(rep)]
    out += ["", "## Metric definitions", ""] + [f"- {line}" for line in _vocabulary_lines(rep)]
    return "\n".join(out) + "\n"


def to_html(rep: Report) -> str:
    """Return the report as one self-contained HTML results page (:mod:`.report_html`)."""
    from .report_html import render_html

    notes = {role: note for role in ROLES for title, _, _, note in _sections(rep) if title == TITLES[role]}
    return render_html(rep, _summary_lines(rep), notes, _vocabulary_lines(rep))


RENDERERS = {"md": to_markdown, "html": to_html, "json": to_json}

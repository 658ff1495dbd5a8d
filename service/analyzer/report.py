"""``splitwatch report``: the weekly KPI significance report, as Markdown, self-contained HTML or JSON."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import duckdb

from splitwatch.stats import ExperimentResult, MetricResult, sample_size_means, sample_size_proportions

from ..config import Config, ExperimentConfig
from .analysis import analyze_data
from .kpi_queries import ExperimentData, load_experiment, prepare_events
from .lake import Lake


def last_full_iso_week(today: date | None = None) -> tuple[date, date]:
    """Return (Monday, Sunday) of the last complete ISO week before ``today``."""
    today = today or datetime.now(UTC).date()
    this_monday = today - timedelta(days=today.weekday())
    return this_monday - timedelta(days=7), this_monday - timedelta(days=1)


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
    verdict: str = ""
    drift: list[dict[str, Any]] = field(default_factory=list)  # drift events of the period, in time order


def _progress(i: int, total: int, label: str) -> None:
    if sys.stderr.isatty() or total > 1:
        bar = "#" * int(30 * i / total)
        print(f"\r{label} [{bar:<30}] {i}/{total}", end="" if i < total else "\n", file=sys.stderr, flush=True)


def build_report(cfg: Config, key: str, start: date, end: date, sequential: bool = True,
                 progress: bool = True) -> Report:
    """Return the report of experiment ``key`` for units first exposed from ``start`` to ``end`` (inclusive)."""
    exp = cfg.experiment(key)
    if exp is None:
        raise ValueError(f"no experiment {key!r} in the config; experiments: {[e.key for e in cfg.experiments]}")
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    lake = Lake(cfg.analyzer.lake_dir)
    con = duckdb.connect()
    try:
        days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
        series: dict[tuple[str, str], list[SeriesPoint]] = {}
        data = result = None
        prepare_events(con, lake.glob(key), exp.phase)
        drift = _drift_events(con, start, end)
        for i, day in enumerate(days, 1):
            data = load_experiment(con, None, exp, cfg.analyzer, _day_start(start),
                                   _day_start(day + timedelta(days=1)))
            result = analyze_data(data, exp, cfg.analyzer, sequential)
            for r in result.results if result else []:
                series.setdefault((r.metric, r.arm), []).append(SeriesPoint(
                    day.isoformat(), r.effect.relative, *(r.effect.relative_ci or (None, None))))
            if progress:
                _progress(i, len(days), f"report {key}")
    finally:
        con.close()
    assert data is not None
    rep = Report(exp, start, end, data, result, sequential, series, drift=drift)
    rep.verdict = verdict(rep)
    return rep


def _drift_events(con: duckdb.DuckDBPyConnection, start: date, end: date) -> list[dict[str, Any]]:
    """Return the drift detector's verdict changes in the period (from the ``ev`` table)."""
    has = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'ev' "
                      "AND column_name = 'detector'").fetchone()[0]
    if not has:
        return []
    rows = con.execute(
        "SELECT ts, coalesce(arm, 'all'), detector, detected, drifted_features FROM ev WHERE type = 'drift' "
        "AND ts >= ? AND ts < ? ORDER BY ts", [_day_start(start), _day_start(end + timedelta(days=1))]).fetchall()
    return [{"ts": ts.isoformat(), "arm": arm, "detector": det, "detected": bool(hit),
             "features": json.loads(feats) if feats else []} for ts, arm, det, hit, feats in rows]


def _days_to_power(rep: Report, r: MetricResult) -> float | None:
    """Return the extra days needed for 80% power at the observed effect, or None if it cannot be told."""
    d = rep.data
    days = max(1, (rep.end - rep.start).days + 1)
    total_units = sum(d.units.values())
    per_day = total_units / days
    effect = r.effect.absolute
    if effect == 0 or per_day == 0:
        return None
    try:
        if r.kind == "binary":
            n0, n1 = sample_size_proportions(r.control.estimate, effect)
        else:
            sd = r.control.se * math.sqrt(max(r.control.n, 1))
            n0, n1 = sample_size_means(effect, sd)
    except ValueError:
        return None
    return max(0.0, (n0 + n1 - total_units) / per_day)


def verdict(rep: Report) -> str:
    """Return a plain-language decision: ship, keep running (with the days to reach power), or stop."""
    res = rep.result
    if res is None:
        return "Keep running: an arm has fewer than 2 units in this period, nothing can be concluded yet."
    if res.srm is not None and res.srm.mismatch:
        return (f"Stop and investigate: sample ratio mismatch (p = {res.srm.p_value:.2g}). The split of units "
                "does not match the weights, so assignment or logging is broken and no result can be trusted.")
    breached = [r for r in res.results if r.guardrail is not None and r.guardrail.status == "breached"]
    if breached:
        names = ", ".join(f"{r.metric} ({r.arm})" for r in breached)
        return f"Stop: guardrail breached: {names}. The fine-tuned model makes these worse beyond the margin."
    primary_names = {m.name for m in rep.experiment.metrics if not m.guardrail}
    primary = [r for r in res.results if r.metric in primary_names]
    worse = [r for r in primary if r.decision == "worse"]
    if worse:
        return "Stop: significantly worse on " + ", ".join(f"{r.metric} ({r.arm})" for r in worse) + "."
    better = [r for r in primary if r.decision == "better"]
    if better:
        return ("Ship: significantly better on " + ", ".join(f"{r.metric} ({r.arm})" for r in better)
                + ", with no primary metric worse and no guardrail breached.")
    waits = [(r, _days_to_power(rep, r)) for r in primary]
    known = [(r, w) for r, w in waits if w is not None]
    if not known:
        return "Keep running: no primary metric is significant yet."
    r, w = min(known, key=lambda x: x[1])
    if w > 365:
        return (f"Keep running or stop: at the observed effect on {r.metric} ({r.effect.absolute:+.3g}), 80% power "
                "would take more than a year at the current traffic; the effect is probably too small to matter.")
    return (f"Keep running: about {math.ceil(w)} more days to reach 80% power for the observed effect on "
            f"{r.metric} ({r.effect.absolute:+.3g}) at the current traffic.")


# -- rendering ------------------------------------------------------------------------------------
def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v * 100:+.2f}%"


def _ci(ci: tuple[float, float] | None, pct: bool = False) -> str:
    if ci is None:
        return "n/a"
    f = _pct if pct else (lambda x: f"{x:+.4g}")
    return f"[{f(ci[0])}, {f(ci[1])}]"


def to_dict(rep: Report) -> dict[str, Any]:
    """Return the report as JSON-ready data."""
    d, res = rep.data, rep.result
    out: dict[str, Any] = {
        "experiment": rep.experiment.key, "phase": rep.experiment.phase, "from": rep.start.isoformat(),
        "to": rep.end.isoformat(), "method": "always-valid (sequential)" if rep.sequential else "fixed horizon",
        "units": d.units, "requests": d.requests, "excluded": {
            "units_in_several_arms": d.multi_arm_units, "orphan_outcomes": d.orphan_outcomes,
            "late_outcomes": d.late_outcomes, "forced_requests": d.forced_requests},
        "skipped_metrics": {**d.skipped, **(res.skipped if res is not None else {})},
        "verdict": rep.verdict, "srm": None, "drift": rep.drift, "results": []}
    if res is not None and res.srm is not None:
        out["srm"] = {"p_value": res.srm.p_value, "mismatch": res.srm.mismatch, "method": res.srm.method,
                      "expected": res.srm.expected}
    for r in res.results if res else []:
        out["results"].append({
            "metric": r.metric, "kind": r.kind, "arm": r.arm, "control": r.control.arm,
            "control_value": r.control.estimate, "treatment_value": r.treatment.estimate,
            "control_n": r.control.n, "treatment_n": r.treatment.n,
            "absolute_effect": r.effect.absolute, "absolute_ci": list(r.effect.absolute_ci),
            "relative_effect": r.effect.relative,
            "relative_ci": list(r.effect.relative_ci) if r.effect.relative_ci else None,
            "p_value": r.effect.p_value, "p_value_adjusted": r.p_value_adjusted, "method": r.method,
            "decision": r.decision, "chance_to_win": r.bayesian.chance_to_win,
            "guardrail": None if r.guardrail is None else {
                "status": r.guardrail.status, "margin": r.guardrail.margin, "harm": r.guardrail.harm},
            "series": [p.__dict__ for p in rep.series.get((r.metric, r.arm), [])]})
    return out


def to_json(rep: Report) -> str:
    """Return the report as JSON text."""
    return json.dumps(to_dict(rep), indent=2, default=str)


def _rows(rep: Report) -> list[list[str]]:
    rows = []
    for r in rep.result.results if rep.result else []:
        rows.append([r.metric + (" (guardrail)" if r.guardrail else ""), r.arm, _fmt(r.control.estimate),
                     _fmt(r.treatment.estimate), f"{r.effect.absolute:+.4g} {_ci(r.effect.absolute_ci)}",
                     f"{_pct(r.effect.relative)} {_ci(r.effect.relative_ci, pct=True)}",
                     _fmt(r.p_value_adjusted, 3), r.guardrail.status if r.guardrail else r.decision,
                     r.method])
    return rows


HEADER = ["metric", "arm", "control", "treatment", "absolute effect [CI]", "relative effect [CI]",
          "p (adjusted)", "decision", "method"]


def _summary_lines(rep: Report) -> list[str]:
    d, res = rep.data, rep.result
    tests = "always-valid sequential tests" if rep.sequential else "fixed-horizon tests"
    lines = [f"Experiment {rep.experiment.key}, phase {rep.experiment.phase}, units first exposed "
             f"{rep.start} to {rep.end} ({tests})",
             "Units per arm: " + ", ".join(f"{a} {n}" for a, n in sorted(d.units.items())),
             "Requests per arm: " + ", ".join(f"{a} {n}" for a, n in sorted(d.requests.items()))]
    if res is not None and res.srm is not None:
        lines.append(f"Sample ratio check: p = {res.srm.p_value:.3g} "
                     f"({'MISMATCH' if res.srm.mismatch else 'ok'}, {res.srm.method})")
    lines.append(f"Excluded: {d.multi_arm_units} units seen in several arms, {d.forced_requests} forced requests; "
                 f"{d.orphan_outcomes} outcomes without an exposure, {d.late_outcomes} after the attribution window")
    for m, why in d.skipped.items():
        lines.append(f"Not computed: {m} ({why})")
    for m, why in (res.skipped.items() if res is not None else ()):
        lines.append(f"Not testable: {m} ({why})")
    for e in rep.drift:
        what = "drift detected" if e["detected"] else "drift cleared"
        lines.append(f"Prompt {what} at {e['ts'][:16]} UTC ({e['arm']}, {e['detector']}): "
                     f"{', '.join(e['features']) or 'no feature'}")
    return lines


def to_markdown(rep: Report) -> str:
    """Return the report as Markdown."""
    out = [f"# splitwatch report: {rep.experiment.key}", "", f"**Verdict.** {rep.verdict}", ""]
    out += [f"- {line}" for line in _summary_lines(rep)]
    out += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(row) + " |" for row in _rows(rep)]
    return "\n".join(out) + "\n"


def _plot(points: list[SeriesPoint], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in points if p.relative is not None]
    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=90)
    if pts:
        xs = [p.day[5:] for p in pts]
        ax.plot(xs, [p.relative * 100 for p in pts], marker="o", color="#1f77b4")
        ax.fill_between(xs, [p.low * 100 for p in pts], [p.high * 100 for p in pts], alpha=0.2, color="#1f77b4")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("relative effect, %", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def to_html(rep: Report) -> str:
    """Return the report as one self-contained HTML page (plots embedded as PNG)."""
    esc = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in _rows(rep))
    plots = "".join(
        f'<figure><img alt="{esc(m)} {esc(a)}" '
        f'src="data:image/png;base64,{_plot(pts, f"{m}: {a} vs control (cumulative)")}"></figure>'
        for (m, a), pts in rep.series.items())
    summary = "".join(f"<li>{esc(line)}</li>" for line in _summary_lines(rep))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>splitwatch report: {esc(rep.experiment.key)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#f4f4f4}}
.verdict{{padding:1em;background:#eef5ff;border-left:4px solid #1f77b4}}
figure{{display:inline-block;margin:0.5em}}</style>
</head><body><h1>splitwatch report: {esc(rep.experiment.key)}</h1>
<p class="verdict"><b>Verdict.</b> {esc(rep.verdict)}</p><ul>{summary}</ul>
<h2>KPIs and guardrails</h2><table><tr>{''.join(f'<th>{esc(h)}</th>' for h in HEADER)}</tr>{rows}</table>
<h2>Effects over time</h2>{plots}</body></html>
"""


RENDERERS = {"md": to_markdown, "html": to_html, "json": to_json}

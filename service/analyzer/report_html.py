"""The report as a results page: one self-contained HTML file (inline SVG and PNG), readable offline.

Verdict first (colour-coded, with its reasons), then banners (sample ratio, data quality), one
section per metric role with each metric's interval drawn on an axis shared by the section (the
zero line, and for guardrails the margin), the effects over time with their interval bands in a
grid, the drift and rollout timelines, and the metric definitions.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable

from splitwatch.stats import ROLES, MetricResult

from .daily_series import SeriesPoint
from .report import Report
from .report_content import TITLES, banners, metric_vocabulary, power_line, sections, summary_lines, vocabulary_lines
from .report_format import fmt_chance, fmt_interval, fmt_margin, fmt_n, fmt_num, fmt_p
from .report_holdout import HOLDOUT_HEADER, HOLDOUT_NOTE, holdout_rows
from .report_interactions import INTERACTION_HEADER, INTERACTION_NOTE, interaction_rows
from .report_segments import SEGMENT_HEADER, heterogeneity_lines, segment_note, segment_rows
from .report_serving import SERVING_HEADER, SIZE_HEADER, missing_measures, serving_note, serving_rows, size_rows
from .report_tables import (
    ANSWERS_HEADER,
    ANSWERS_NOTE,
    DRIFT_HEADER,
    SHADOW_CATEGORY_HEADER,
    SHADOW_HEADER,
    SHADOW_NOTE,
    TIMELINE_HEADER,
    answer_rows,
    drift_rows,
    shadow_category_rows,
    shadow_rows,
    timeline_rows,
)

esc = html.escape
COLOURS = {"better": "#1e8e3e", "worse": "#d93025", "inconclusive": "#5f6368", "non_inferior": "#1e8e3e",
           "breached": "#d93025"}
VERDICT_STYLE = {"ship": ("#e6f4ea", "#1e8e3e"), "keep_running": ("#fef7e0", "#e37400"),
                 "roll_back": ("#fce8e6", "#d93025"), "invalid": ("#f1f3f4", "#5f6368")}
BAR_W, BAR_H, PAD = 220, 28, 8

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1340px;color:#202124;
padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#5f6368;margin-top:0}
.verdict{padding:1em 1.2em;border-left:6px solid;border-radius:4px;margin:1em 0}
.verdict .decision{font-size:1.3em;font-weight:700;letter-spacing:.02em}
.verdict ul{margin:.5em 0 0 0}
.banner{padding:.7em 1em;border-radius:4px;margin:.5em 0}
.banner.error{background:#fce8e6;border:1px solid #d93025}.banner.warning{background:#fef7e0;border:1px solid #e37400}
table{border-collapse:collapse;font-size:13px;width:100%}
td,th{border-bottom:1px solid #e0e0e0;padding:6px 8px;text-align:left;vertical-align:middle}
th{background:#f8f9fa;font-weight:600}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
td.num.iv{white-space:normal;min-width:8em}
.metric-name{font-weight:600}.desc{color:#5f6368;font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;white-space:nowrap}
.note{font-size:12px;color:#5f6368}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:12px}
.grid figure{margin:0;border:1px solid #eee;border-radius:4px;padding:4px}
.grid img{width:100%}
ul.summary{font-size:13px}
.scroll{overflow-x:auto;max-width:100%}
.axis-title{font-size:12px;font-weight:600;white-space:nowrap}
.power{font-weight:600}
"""


def _badge(text: str, key: str) -> str:
    return f'<span class="badge" style="background:{COLOURS.get(key, "#5f6368")}">{esc(text)}</span>'


def _bar_points(r: MetricResult) -> tuple[float | None, float | None, float | None]:
    """Return (estimate, low, high) on the section's axis: relative effect in %, or harm in margins."""
    g = r.guardrail
    if r.role == "guardrail" and g is not None:
        m = g.margin or 1.0
        return tuple(None if v is None or math.isnan(v) else v / m for v in (g.harm, g.lower, g.upper))  # type: ignore[return-value]
    if r.effect.relative is None or r.effect.relative_ci is None:
        return None, None, None
    lo, hi = r.effect.relative_ci
    return r.effect.relative * 100, lo * 100, hi * 100


def _axis(rows: Iterable[MetricResult], guardrails: bool) -> tuple[float, float]:
    values = [0.0, 1.0] if guardrails else [0.0]
    for r in rows:
        values += [v for v in _bar_points(r) if v is not None and math.isfinite(v)]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return lo - 0.08 * span, hi + 0.08 * span


def interval_svg(r: MetricResult, axis: tuple[float, float]) -> str:
    """Return an inline SVG of one metric's interval on the section's shared axis (zero and margin lines)."""
    est, lo, hi = _bar_points(r)
    a, b = axis

    def x(v: float) -> float:
        return PAD + (min(max(v, a), b) - a) / (b - a) * (BAR_W - 2 * PAD)

    status = r.guardrail.status if r.role == "guardrail" and r.guardrail else r.decision
    colour = COLOURS.get(status, "#5f6368")
    mid = BAR_H / 2
    parts = [f'<line x1="{PAD}" x2="{BAR_W - PAD}" y1="{mid}" y2="{mid}" stroke="#e0e0e0"/>',
             f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="2" y2="{BAR_H - 2}" stroke="#9aa0a6" stroke-dasharray="3,2"/>']
    if r.role == "guardrail":
        parts.append(f'<line class="margin-line" x1="{x(1):.1f}" x2="{x(1):.1f}" y1="2" y2="{BAR_H - 2}" '
                     f'stroke="#d93025" stroke-width="1.5"/>')
    if lo is not None and hi is not None:
        parts.append(f'<rect x="{x(lo):.1f}" y="{mid - 4}" width="{max(1.5, x(hi) - x(lo)):.1f}" height="8" '
                     f'rx="3" fill="{colour}" fill-opacity="0.35" stroke="{colour}"/>')
    if est is not None and math.isfinite(est):
        parts.append(f'<circle cx="{x(est):.1f}" cy="{mid}" r="4" fill="{colour}"/>')
    what = ("harm in margins (1 = the margin)" if r.role == "guardrail" else "relative effect, %")
    title = f"{r.metric} ({r.arm}): {what} {fmt_num(est)} [{fmt_num(lo)}, {fmt_num(hi)}]"
    return (f'<svg class="interval-bar" data-metric="{esc(r.metric)}" data-arm="{esc(r.arm)}" width="{BAR_W}" '
            f'height="{BAR_H}" viewBox="0 0 {BAR_W} {BAR_H}" role="img"><title>{esc(title)}</title>'
            + "".join(parts) + "</svg>")


def _axis_labels(axis: tuple[float, float], guardrails: bool) -> str:
    """Return the interval column's header: what the axis is, and the values at its two ends."""
    a, b = axis
    if guardrails:  # harm in units of the margin: 0 is no harm, 1 is the margin (the red line)
        title, ends = "harm ÷ margin (0: none; 1: the margin, red)", (f"{a:+.2g}", f"{b:+.2g}")
    else:
        title, ends = "relative effect (0: none)", (f"{fmt_num(a, 2)}%", f"{fmt_num(b, 2)}%")
    return (f'<div class="axis-title">{esc(title)}</div><div class="note" style="display:flex;'
            f'justify-content:space-between;width:{BAR_W}px"><span>{esc(ends[0])}</span><span>{esc(ends[1])}'
            "</span></div>")


def _metric_cell(r: MetricResult, vocab: dict[str, dict[str, object]]) -> str:
    v = vocab.get(r.metric, {})
    desc = v.get("description") or ""
    definition = v.get("definition") or ""
    return (f'<div class="metric-name" title="{esc(str(definition))}">{esc(r.metric)}</div>'
            + (f'<div class="desc">{esc(str(desc))}</div>' if desc else ""))


def _section(rep: Report, role: str, rows: list[MetricResult], vocab: dict[str, dict[str, object]],
             note: str) -> str:
    guardrails = role == "guardrail"
    axis = _axis(rows, guardrails)
    values = ["metric", "arm", "control", "treatment", "n (control / treatment)"]
    if guardrails:
        head = [*values, "harm [one-sided bounds] vs margin", "interval", "status"]
    else:
        head = [*values, "absolute effect [CI]", "relative effect [CI]", "interval", "p",
                *(["p adjusted", "chance to win"] if role in ("primary", "secondary") else []), "decision"]
    body = []
    for r in rows:
        # every cell is HTML: text is escaped here (a p-value "<0.001" included), markup is not
        cells = [_metric_cell(r, vocab), esc(r.arm), esc(fmt_num(r.control.estimate)),
                 esc(fmt_num(r.treatment.estimate)), esc(fmt_n(r.control.n, r.treatment.n))]
        if guardrails and r.guardrail is not None:
            g = r.guardrail
            cells += [esc(fmt_interval(g.harm, g.lower, g.upper, percent=g.relative)
                          + f" vs {fmt_margin(g.margin, g.relative)}"),
                      interval_svg(r, axis), _badge(g.status.replace("_", " "), g.status)]
        else:
            cells += [esc(fmt_interval(r.effect.absolute, *r.effect.absolute_ci)),
                      esc(fmt_interval(r.effect.relative, *(r.effect.relative_ci or (None, None)), percent=True)),
                      interval_svg(r, axis), esc(fmt_p(r.p_value))]
            if role in ("primary", "secondary"):
                cells += [esc(fmt_p(r.p_value_adjusted)), esc(fmt_chance(r.bayesian.chance_to_win))]
            cells.append(_badge(r.decision, r.decision))
        # the intervals may fold at their space (a wide table must not run off a 1,400 px page)
        body.append("<tr>" + "".join(f'<td class="{"num iv" if i in (5, 6) else "num" if 2 <= i <= 4 else ""}">'
                                     f"{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    header = "".join(f"<th>{esc(h)}</th>" if h != "interval" else f"<th>{_axis_labels(axis, guardrails)}</th>"
                     for h in head)
    return (f'<h2 id="{role}">{esc(TITLES[role])}</h2><div class="scroll"><table class="results" data-role="{role}">'
            f"<tr>{header}</tr>" + "".join(body) + f'</table></div><p class="note">{esc(note)}</p>')


def _plot(points: list[SeriesPoint], title: str) -> str:
    """Return a PNG (base64) of a cumulative relative effect over days, with its interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in points if p.relative is not None]
    fig, ax = plt.subplots(figsize=(5.2, 2.6), dpi=100)
    if pts:
        xs = list(range(len(pts)))
        lows = [(p.low if p.low is not None else p.relative) * 100 for p in pts]
        highs = [(p.high if p.high is not None else p.relative) * 100 for p in pts]
        if len(pts) == 1:  # one day: a band needs two points; the interval is drawn as a bar
            ax.fill_between([-0.15, 0.15], [lows[0]] * 2, [highs[0]] * 2, alpha=0.25, color="#1a73e8", lw=0,
                            label="interval")
            ax.set_xlim(-1, 1)
        else:
            ax.fill_between(xs, lows, highs, alpha=0.25, color="#1a73e8", lw=0, label="interval")
        ax.plot(xs, [p.relative * 100 for p in pts], marker="o", ms=3, color="#1a73e8", label="effect")
        ax.set_xticks(xs, [p.day[5:] for p in pts], fontsize=7, rotation=45 if len(pts) > 8 else 0)
    ax.axhline(0, color="#5f6368", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("relative effect, %", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(header: list[str], rows: list[list[str]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


def _segments_html(rep: Report) -> str:
    seg = rep.segments
    if seg is None:
        return ""
    tables = "".join(f'<h3>By {esc(d)}</h3>{_table(SEGMENT_HEADER, segment_rows(seg, d))}' for d in seg.dimensions)
    lines = heterogeneity_lines(seg)
    het = (f'<p class="note">Heterogeneity (arm x segment interaction):</p><ul>'
           f'{"".join(f"<li>{esc(x)}</li>" for x in lines)}</ul>') if lines else ""
    return f'<h2 id="segments">Segments</h2><p class="note">{esc(segment_note(seg))}</p>{tables}{het}'


def _serving_html(rep: Report) -> str:
    s = rep.serving
    if s is None:
        return ""
    rows = serving_rows(s)
    missing = missing_measures(s)
    body = _table(SERVING_HEADER, rows) if rows else ""
    if missing and not s.why:
        body += f'<p class="note">No server exported: {esc(", ".join(missing))}.</p>'
    return (f'<h2 id="serving">Serving</h2><p class="note">{esc(serving_note(s))}</p>{body}'
            f"<h3>Model size</h3>{_table(SIZE_HEADER, size_rows(s))}")


def _holdout_html(rep: Report) -> str:
    h = rep.holdout
    if h is None:
        return ""
    body = _table(HOLDOUT_HEADER, holdout_rows(h)) if h.result else f"<p>Not compared: {esc(h.why)}.</p>"
    return f'<h2 id="holdout">Long-term holdout</h2><p class="note">{esc(HOLDOUT_NOTE)}</p>{body}'


def _interactions_html(rep: Report) -> str:
    if not rep.interactions:
        return ""
    return (f'<h2 id="interactions">Interactions with concurrent experiments</h2>'
            f'<p class="note">{esc(INTERACTION_NOTE)}</p>{_table(INTERACTION_HEADER, interaction_rows(rep))}')


def render_html(rep: Report, summary: list[str], notes: dict[str, str], vocabulary: list[str]) -> str:
    """Return the report as one self-contained HTML page."""
    v = rep.verdict
    decision = v.decision if v else "invalid"
    bg, fg = VERDICT_STYLE.get(decision, VERDICT_STYLE["invalid"])
    reasons = "".join(f"<li>{esc(r.message)}</li>" for r in (v.reasons if v else []))
    line = power_line(v) if v is not None else None
    power = f'<p class="power">{esc(line)}</p>' if line else ""
    # the reasons are the sentence's parts: shown once, as a list (the sentence when there are none)
    body = f"<ul>{reasons}</ul>" if reasons else f"<p>{esc(v.sentence if v else 'no verdict')}</p>"
    headline = v.headline if v else "no verdict"
    verdict = (f'<div class="verdict" id="verdict" data-decision="{decision}" style="background:{bg};'
               f'border-color:{fg}"><div class="decision" style="color:{fg}">{esc(headline)}'
               f"</div>{body}{power}</div>")
    banner_html = "".join(f'<div class="banner {level}">{esc(text)}</div>' for level, text in banners(rep))
    vocab = {m["metric"]: m for m in metric_vocabulary(rep)}
    results = rep.result.results if rep.result else []
    by_role = "".join(_section(rep, role, [r for r in results if r.role == role], vocab, notes.get(role, ""))
                       for role in ROLES if any(r.role == role for r in results))
    plots = "".join(
        f'<figure><img alt="{esc(m)}, {esc(a)} vs control" '
        f'src="data:image/png;base64,{_plot(pts, f"{m}: {a} vs control (cumulative)")}"></figure>'
        for (m, a), pts in rep.series.items() if any(p.relative is not None for p in pts))
    drift = _segments_html(rep) + _holdout_html(rep) + _interactions_html(rep) + _serving_html(rep)
    drift += f"<h2>Drift timeline</h2>{_table(DRIFT_HEADER, drift_rows(rep))}" if rep.drift else ""
    if rep.answers:
        drift += (f"<h2>Answers per arm</h2>{_table(ANSWERS_HEADER, answer_rows(rep))}"
                  f'<p class="note">{esc(ANSWERS_NOTE)}</p>')
    if rep.shadow:
        drift += (f"<h2>Shadow traffic</h2>{_table(SHADOW_HEADER, shadow_rows(rep))}"
                  f'<p class="note">{esc(SHADOW_NOTE)}</p>'
                  f"{_table(SHADOW_CATEGORY_HEADER, shadow_category_rows(rep))}")
    rollout = f"<h2>Rollout timeline</h2>{_table(TIMELINE_HEADER, timeline_rows(rep))}" if rep.timeline else ""
    tests = "always-valid sequential tests" if rep.sequential else "fixed-horizon tests"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>splitwatch report: {esc(rep.experiment.key)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>
<h1>{esc(rep.experiment.key)}: <span class="headline" style="color:{fg}">{esc(headline)}</span></h1>
<p class="sub">Phase {rep.experiment.phase}, units first exposed {rep.start} to {rep.end}, {tests}</p>
{verdict}{banner_html}
<ul class="summary">{"".join(f"<li>{esc(line)}</li>" for line in summary)}</ul>
{by_role}
<h2>Effects over time</h2>
<p class="note">Cumulative relative effect at the end of each day, with its interval as a band.</p>
<div class="grid">{plots}</div>
{drift}{rollout}
<h2>Metric definitions</h2><ul>{"".join(f"<li>{esc(line)}</li>" for line in vocabulary)}</ul>
</body></html>
"""


def to_html(rep: Report) -> str:
    """Return the report as one self-contained HTML results page."""
    notes = {role: note for role in ROLES for title, _, _, note in sections(rep) if title == TITLES[role]}
    return render_html(rep, summary_lines(rep), notes, vocabulary_lines(rep))

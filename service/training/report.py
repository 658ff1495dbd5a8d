"""The training report: the runs side by side (a table and one plot per curve, a line per run), each
run's findings in a sentence, in Markdown, HTML and JSON like the other reports."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..analyzer.report_format import fmt_num, md_table
from ..analyzer.report_html import CSS
from .analysis import OVERFIT_RISE, TAIL_SHARE, RunFindings
from .sources import EVAL_LOSS, TRAIN_LOSS, TrainingRun

HEADER = ["run", "method / params", "steps", "final train loss", "convergence", "best eval loss (step)",
          "last eval loss (step)", "over-fits from", "gap at last", "diverged at", "spikes"]


def rows(findings: list[RunFindings]) -> list[list[str]]:
    """Return the side-by-side table's rows, one per run."""
    out = []
    for f in findings:
        params = ", ".join(f"{k}={v}" for k, v in sorted(f.params.items())) or "n/a"
        out.append([f.name, params, str(f.steps or "n/a"), fmt_num(f.final_train_loss), f.convergence,
                    f"{fmt_num(f.best_eval_loss)} ({f.best_step})" if f.best_step is not None else "n/a",
                    f"{fmt_num(f.last_eval_loss)} ({f.last_eval_step})" if f.last_eval_step is not None else "n/a",
                    str(f.overfitting_from) if f.overfitting_from is not None else "no",
                    fmt_num(f.gap_at_last), str(f.diverged_at) if f.diverged_at is not None else "no",
                    str(len(f.spikes))])
    return out


def plot(runs: list[TrainingRun], series: str, title: str) -> str | None:
    """Return a PNG (base64) of one series, a line per run (None when no run logged it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = [r for r in runs if series in r.series and r.series[series].steps.size]
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=100)
    for r in have:
        s = r.series[series]
        ok = np.isfinite(s.values)
        line, = ax.plot(s.steps[ok], s.values[ok], lw=1.3, label=r.name)
        bad = s.steps[~ok]
        if bad.size:  # where the curve stops: the first non-finite point
            ax.axvline(bad[0], color=line.get_color(), ls=":", lw=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_markdown(findings: list[RunFindings]) -> str:
    """Return the report as Markdown."""
    lines = ["# Training runs", "", f"{len(findings)} run{'s' if len(findings) != 1 else ''}; the rules are in "
             "docs/training.md.", "", "## Findings", ""]
    lines += [f"- **{f.name}**: {f.verdict}" for f in findings]
    lines += ["", "## Side by side", "", *md_table(HEADER, rows(findings))]
    return "\n".join(lines) + "\n"


def render_html(runs: list[TrainingRun], findings: list[RunFindings]) -> str:
    """Return the report as one self-contained HTML page with the learning curves."""
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Training runs</title>"
             f"<style>{CSS}.scroll{{overflow-x:auto;max-width:100%}}</style></head><body>",
             "<h1>Training runs</h1>", "<h2>Findings</h2><ul>"]
    parts += [f'<li data-run="{esc(f.name)}"><b>{esc(f.name)}</b>: {esc(f.verdict)}</li>' for f in findings]
    parts.append("</ul><h2>Learning curves</h2>")
    names = {TRAIN_LOSS: "training loss", EVAL_LOSS: "validation loss"}
    extra = sorted({k for r in runs for k in r.series if k.startswith("eval_") and k != EVAL_LOSS})
    for key in [TRAIN_LOSS, EVAL_LOSS, *extra]:
        png = plot(runs, key, names.get(key, key))
        if png:
            parts.append(f'<figure><img alt="{esc(key)}" src="data:image/png;base64,{png}"></figure>')
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows(findings))
    parts.append(f'<h2>Side by side</h2><div class="scroll"><table><tr>{head}</tr>{body}</table></div>')
    parts.append(f"<p class='note'>Rules: docs/training.md (convergence over the last {TAIL_SHARE:.0%} of steps; "
                 f"over-fitting when validation loss rises more than {OVERFIT_RISE:.0%} above its minimum while "
                 "training loss still falls).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def report_json(runs: list[TrainingRun], findings: list[RunFindings]) -> dict[str, Any]:
    """Return the report as JSON-able values: each run's findings and its curves."""
    def points(s: Any) -> list[list[float | None]]:
        return [[float(a), float(b) if np.isfinite(b) else None] for a, b in zip(s.steps, s.values, strict=True)]

    return {"runs": [{**f.as_dict(), "curves": {k: points(s) for k, s in r.series.items()}}
                     for r, f in zip(runs, findings, strict=True)]}


def write_reports(runs: list[TrainingRun], findings: list[RunFindings], directory: Path) -> list[Path]:
    """Write report.md, report.html and report.json into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = [directory / "report.md", directory / "report.html", directory / "report.json"]
    out[0].write_text(render_markdown(findings), encoding="utf-8")
    out[1].write_text(render_html(runs, findings), encoding="utf-8")
    out[2].write_bytes(orjson.dumps(report_json(runs, findings), option=orjson.OPT_INDENT_2))
    return out

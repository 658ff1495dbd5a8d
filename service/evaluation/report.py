"""The eval's report, in the weekly report's style: ``report.md``, ``report.html`` and ``report.json``.

Verdict lines first (per candidate arm: better, worse, not distinguishable, per metric), then the
paired comparisons (difference B - A with its interval, the test, the raw and corrected p-values),
the per-arm figures, the confusion matrices for labels, and the bad lines of the dataset.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import orjson

from ..analyzer.report_format import fmt_count, fmt_interval, fmt_num, fmt_p, md_table
from ..analyzer.report_html import CSS
from .compare import EvalResult, bootstrap_floor
from .dataset import Dataset
from .report_sections import Section, percent_metric, sections

ARM_COLUMNS = [
    ("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("micro_f1", "micro-F1"), ("auc_roc", "AUC-ROC"),
    ("brier", "Brier"), ("ece", "ECE"), ("exact_match", "exact match"),
    ("normalised_exact_match", "norm. exact match"), ("mse", "MSE"), ("mae", "MAE"), ("r2", "R²"),
    ("unparseable_rate", "no number"), ("bleu", "BLEU"), ("chrf", "chrF"), ("rouge_l", "ROUGE-L"),
    ("meteor", "METEOR"), ("perplexity", "perplexity"), ("checks_passed", "checks passed"),
    ("compile_rate", "compiles"), ("pass_rate", "tests pass"),
    ("agreement", "agreement"), ("similarity", "similarity"), ("error_rate", "errors"),
    ("latency_p50_s", "latency p50 (s)"), ("latency_p95_s", "latency p95 (s)"),
    ("completion_tokens_mean", "completion tokens"), ("judge_win_rate", "judge win rate"),
    ("judge_order_inconsistent", "judge order-inconsistent"), ("judge_invalid", "judge replies invalid"),
    ("judge_relevance", "judge relevance"), ("judge_factual_accuracy", "judge factual accuracy"),
    ("human_relevance", "people's relevance"), ("human_factual_accuracy", "people's factual accuracy"),
]
VERDICT_COLOURS = {"better": "#1e8e3e", "worse": "#d93025", "not distinguishable": "#5f6368",
                   "higher": "#5f6368", "lower": "#5f6368"}




# what the control's and the arm's figures are, where the metric's name does not say it
STATISTIC = {"latency_s": "mean of each case's seconds per call; Wilcoxon on the pairs",
             "completion_tokens": "mean per case"}


def metric_label(metric: str) -> str:
    """Return a metric's name with the statistic its figures are (latency: a mean, not a median)."""
    return f"{metric} ({STATISTIC[metric]})" if metric in STATISTIC else metric


def comparison_rows(res: EvalResult) -> list[list[str]]:
    """Return the comparison table's rows (the columns of :data:`COMPARISON_HEADER`)."""
    rows = []
    for c in res.comparisons:
        r, pct = c.result, percent_metric(c.metric)
        scale = 100.0 if pct else 1.0
        unit = "%" if pct else ""
        rows.append([f"{c.arm} vs {c.against}", metric_label(c.metric), fmt_num(r.estimate_a * scale) + unit,
                     fmt_num(r.estimate_b * scale) + unit,
                     fmt_interval(r.difference, r.low, r.high, percent=pct), r.method, fmt_p(r.p_value),
                     fmt_p(c.p_adjusted), c.verdict])
    return rows


COMPARISON_HEADER = ["arm vs other", "metric", "other's", "arm's", "difference [95% interval]", "test", "p",
                     "p (Holm)", "verdict"]


def arm_rows(res: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Return the per-arm table, one row per figure some arm has and one column per arm (a table that grows
    down with the metrics, not sideways)."""
    cols = [(k, t) for k, t in [("calls", "calls"), *ARM_COLUMNS] if any(k in res.per_arm[a] for a in res.per_arm)]
    rows = []
    for k, title in cols:
        cells = [title]
        for a in res.arms:
            v = res.per_arm.get(a, {}).get(k)
            cells.append(fmt_count(v) if k == "calls" else
                         f"{fmt_num(v * 100)}%" if v is not None and percent_metric(k) else fmt_num(v))
        rows.append(cells)
    return ["figure", *res.arms], rows


def _confusion_rows(labels: list[str], matrix: list[list[int]]) -> list[list[str]]:
    return [[label, *[str(v) for v in row]] for label, row in zip(labels, matrix, strict=True)]


def _intro(res: EvalResult, dataset: Dataset) -> list[str]:
    return [f"{dataset.describe()}.",
            f"{res.cases} complete cases" + (f" ({res.incomplete_cases} not yet answered by every arm, left out)"
                                              if res.incomplete_cases else "")
            + f", {res.repeats} repeat{'s' if res.repeats > 1 else ''} per case and arm; control: {res.control}; "
            f"alpha {res.alpha:g}, p-values corrected together ({res.correction}).",
            "Quality and the paired tests use each case's first repeat; a failed call scores as an empty answer."
            + _bootstrap_sentence(res)]


def _bootstrap_sentence(res: EvalResult) -> str:
    """Return the bootstrap's resamples and the smallest corrected p-value they allow (" ..."), or ""."""
    if not res.n_bootstrap:
        return ""
    floor = bootstrap_floor(len(res.comparisons), res.n_bootstrap, res.correction)
    return (f" Paired bootstraps draw {res.n_bootstrap:,} resamples: their smallest p-value, corrected over the "
            f"{len(res.comparisons)} comparisons, is {floor:.2g}.")


def render_markdown(res: EvalResult, dataset: Dataset) -> str:
    """Return the report as Markdown."""
    lines = [f"# Offline evaluation: {res.experiment}", "", *_intro(res, dataset), "", "## Verdict", ""]
    lines += [f"- {v}" for v in res.verdict_lines()]
    lines += [f"- note: {n}" for n in res.notes]
    lines += ["", "## Paired comparisons", ""]
    lines += md_table(COMPARISON_HEADER, comparison_rows(res))
    for sec in sections(res):
        lines += ["", f"## {sec.title}", "", sec.note, ""]
        lines += [f"- {x}" for x in sec.sentences] + ([""] if sec.sentences else [])
        lines += md_table(sec.header, sec.rows)
    header, rows = arm_rows(res)
    lines += ["", "## Per arm", "", *md_table(header, rows)]
    for a in res.arms:
        matrix = res.per_arm.get(a, {}).get("confusion")
        if matrix:
            lines += ["", f"### Confusion matrix: {a} (rows: expected; columns: answered)", ""]
            lines += md_table(["expected", *res.labels, "(other)"], _confusion_rows(res.labels, matrix))
    if dataset.bad_lines:
        lines += ["", f"## Bad lines left out ({len(dataset.bad_lines)})", ""]
        lines += [f"- {b}" for b in dataset.bad_lines]
    if res.human_bad_lines:
        lines += ["", f"## People's ratings: bad lines left out ({len(res.human_bad_lines)})", ""]
        lines += [f"- {b}" for b in res.human_bad_lines]
    return "\n".join(lines) + "\n"


EVAL_CSS = """
.scroll{overflow-x:auto;max-width:100%}
table.confusion{width:auto;font-size:12px}
table.confusion th.label{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;padding:6px 4px}
table.confusion td{text-align:center;padding:3px 6px}
.verdict .line{font-size:1.1em;margin:.3em 0}
"""


def _overall(res: EvalResult) -> str:
    """Return the verdict box's colour key: worse when any candidate is worse on a metric, better when one
    is better on some and worse on none, else not distinguishable."""
    verdicts = {c.verdict for c in res.comparisons}
    if "worse" in verdicts:
        return "worse"
    return "better" if "better" in verdicts else "not distinguishable"


def _confusion_html(labels: list[str], matrix: list[list[int]]) -> str:
    """Return a compact confusion matrix: column labels written upwards, so ten labels fit any page."""
    head = "<th>expected \\ answered</th>" + "".join(
        f'<th class="label">{html.escape(x)}</th>' for x in [*labels, "(other)"])
    body = "".join("<tr><th>" + html.escape(label) + "</th>" + "".join(
        f'<td style="background:rgba(26,115,232,{min(1.0, v / max(1, max(row))) * 0.35:.2f})">{v}</td>'
        for v in row) + "</tr>" for label, row in zip(labels, matrix, strict=True))
    return f'<div class="scroll"><table class="confusion"><tr>{head}</tr>{body}</table></div>'


def _html_table(header: list[str], rows: list[list[str]], verdict_col: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for i, cell in enumerate(r):
            if i == verdict_col:
                colour = VERDICT_COLOURS.get(cell, "#5f6368")
                cells.append(f'<td><span class="badge" style="background:{colour}">{html.escape(cell)}</span></td>')
            else:
                cells.append(f'<td class="num">{html.escape(cell)}</td>' if i >= 2 else f"<td>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(res: EvalResult, dataset: Dataset) -> str:
    """Return the report as one self-contained HTML page."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Offline evaluation: "
             f"{html.escape(res.experiment)}</title><style>{CSS}{EVAL_CSS}</style></head><body>",
             f"<h1>Offline evaluation: {html.escape(res.experiment)}</h1>",
             "".join(f'<p class="sub">{html.escape(s)}</p>' for s in _intro(res, dataset)),
             _verdict_box(res),
             "".join(f'<p class="note">{html.escape(n)}</p>' for n in res.notes),
             "<h2>Paired comparisons</h2>",
             '<div class="scroll">' + _html_table(COMPARISON_HEADER, comparison_rows(res),
                                                  verdict_col=len(COMPARISON_HEADER) - 1) + "</div>"]
    parts += [_section_html(sec) for sec in sections(res)]
    header, rows = arm_rows(res)
    parts += ["<h2>Per arm</h2>", f'<div class="scroll">{_html_table(header, rows)}</div>']
    for a in res.arms:
        matrix = res.per_arm.get(a, {}).get("confusion")
        if matrix:
            parts += [f"<h2>Confusion matrix: {html.escape(a)}</h2>",
                      "<p class='note'>rows: expected; columns: answered</p>", _confusion_html(res.labels, matrix)]
    for title, bad in (("Bad lines left out", [str(b) for b in dataset.bad_lines]),
                       ("People's ratings: bad lines left out", res.human_bad_lines)):
        if bad:
            parts.append(f"<h2>{title} ({len(bad)})</h2><ul>"
                         + "".join(f"<li>{html.escape(b)}</li>" for b in bad) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _section_html(sec: Section) -> str:
    sentences = "".join(f'<div class="line">{html.escape(x)}</div>' for x in sec.sentences)
    return (f"<h2>{html.escape(sec.title)}</h2><p class='note'>{html.escape(sec.note)}</p>"
            + (f'<div class="sentences">{sentences}</div>' if sentences else "")
            + f'<div class="scroll">{_html_table(sec.header, sec.rows, sec.verdict_col)}</div>')


def _verdict_box(res: EvalResult) -> str:
    """Return the verdict as the results page shows it: a coloured box at the top, one line per candidate."""
    key = _overall(res)
    colour = VERDICT_COLOURS[key]
    bg = {"better": "#e6f4ea", "worse": "#fce8e6"}.get(key, "#f1f3f4")
    lines = "".join(f'<div class="line">{html.escape(v)}</div>' for v in res.verdict_lines())
    return (f'<div class="verdict" id="verdict" data-verdict="{key}" style="background:{bg};border-color:{colour}">'
            f'<div class="decision" style="color:{colour}">Verdict</div>{lines}</div>')


def report_json(res: EvalResult, dataset: Dataset) -> dict[str, Any]:
    """Return the report as JSON-able values (full precision)."""
    return {**res.as_dict(), "dataset": {"path": str(dataset.path), "sha256": dataset.sha256,
                                         "cases": len(dataset.cases), "task_inferred": dataset.task_inferred,
                                         "bad_lines": [vars(b) for b in dataset.bad_lines]},
            "verdict": res.verdict_lines()}


def write_reports(res: EvalResult, dataset: Dataset, directory: Path) -> list[Path]:
    """Write report.md, report.html and report.json into ``directory``; return their paths."""
    out = [directory / "report.md", directory / "report.html", directory / "report.json"]
    out[0].write_text(render_markdown(res, dataset), encoding="utf-8")
    out[1].write_text(render_html(res, dataset), encoding="utf-8")
    out[2].write_bytes(orjson.dumps(report_json(res, dataset), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return out

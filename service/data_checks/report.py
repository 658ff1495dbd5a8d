"""The data report (Markdown, HTML, JSON). Prompt and answer text is sensitive: by default the report
names examples by file and id, with counts, never their text; ``--show-text`` adds the first 80
characters of each example it lists."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import orjson

from ..analyzer.report_format import md_table
from ..analyzer.report_html import CSS
from .checks import DataFindings
from .examples import Example

SNIPPET = 80


def _listed(f: DataFindings) -> list[str]:
    keys = [k for g in f.exact_duplicates + f.near_duplicates for k in g]
    keys += [k for c in f.conflicts for k in c["examples"]] + f.empty + f.over_long
    keys += [c["case"] for c in f.contaminated]
    return list(dict.fromkeys(keys))


def snippets(f: DataFindings, examples: list[Example]) -> dict[str, str]:
    """Return the first characters of every example the report lists (only with ``--show-text``)."""
    by_key = {e.key: e for e in examples}
    return {k: by_key[k].input[:SNIPPET] for k in _listed(f) if k in by_key}


def summary_rows(f: DataFindings) -> list[list[str]]:
    """Return the summary table: each check, its count and what it counts."""
    c = f.counts()
    o = f.options
    share = f.contaminated_share
    return [
        ["examples read", str(c["examples"]), ", ".join(f"{k}: {v}" for k, v in f.files.items())],
        ["bad lines", str(c["bad_lines"]), "not JSON, or no text field: listed below"],
        ["exact duplicates", str(c["exact_duplicates"]), f"in {len(f.exact_duplicates)} groups (each group's "
         "first is not counted)"],
        ["near duplicates", str(c["near_duplicates"]), f"in {len(f.near_duplicates)} groups, MinHash Jaccard "
         f">= {o['near_threshold']} on word 3-shingles"],
        ["conflicting labels", str(c["conflicting_groups"]), "groups of the same or near-same input with "
         "different labels"],
        ["empty", str(c["empty"]), "empty input or target"],
        ["over-long", str(c["over_long"]), f"more than {o['max_words']} words"],
        ["contaminated eval cases", str(c["contaminated"]),
         "n/a: no eval file" if share is None else f"{share:.1%} of {f.eval_cases} eval cases share at least "
         f"{o['overlap']:.0%} of their word {o['ngram']}-grams with the tuning files"],
    ]


def render_markdown(f: DataFindings, texts: dict[str, str] | None = None) -> str:
    """Return the report as Markdown (example text only when ``texts`` is given)."""
    lines = ["# Data checks", "", *md_table(["check", "count", "what"], summary_rows(f)), ""]
    if f.labels:
        lines += ["## Labels", "", f"Largest to smallest: {f.imbalance_ratio:.2f}x; normalised entropy "
                  f"{f.label_entropy:.3f} (1 is even).", "",
                  *md_table(["label", "count"], [[k, str(v)] for k, v in f.labels.items()]), ""]
    for title, groups in (("Exact duplicates", f.exact_duplicates), ("Near duplicates", f.near_duplicates),
                          ("Conflicting labels", [c["examples"] for c in f.conflicts])):
        if groups:
            lines += [f"## {title}", ""] + [f"- {', '.join(g)}" for g in groups] + [""]
    for title, keys in (("Empty", f.empty), ("Over-long", f.over_long)):
        if keys:
            lines += [f"## {title}", "", ", ".join(keys), ""]
    if f.contaminated:
        lines += ["## Contaminated eval cases", ""]
        lines += [f"- {c['case']}: {c['overlap']:.0%} of its n-grams in the tuning files" for c in f.contaminated]
        lines.append("")
    if f.bad_lines:
        lines += ["## Bad lines", ""] + [f"- {b}" for b in f.bad_lines] + [""]
    if texts:
        lines += ["## Text of the examples listed (--show-text)", ""]
        lines += [f"- {k}: {v!r}" for k, v in texts.items()]
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(f: DataFindings, texts: dict[str, str] | None = None) -> str:
    """Return the report as one HTML page (the Markdown's content)."""
    esc = html.escape
    parts = ["<h1>Data checks</h1>", _table(["check", "count", "what"], summary_rows(f))]
    if f.labels:
        parts += ["<h2>Labels</h2>", f"<p>Largest to smallest: {f.imbalance_ratio:.2f}x; normalised entropy "
                  f"{f.label_entropy:.3f} (1 is even).</p>",
                  _table(["label", "count"], [[k, str(v)] for k, v in f.labels.items()])]
    lists = [("Exact duplicates", [", ".join(g) for g in f.exact_duplicates]),
             ("Near duplicates", [", ".join(g) for g in f.near_duplicates]),
             ("Conflicting labels", [", ".join(c["examples"]) for c in f.conflicts]),
             ("Empty", f.empty), ("Over-long", f.over_long),
             ("Contaminated eval cases", [f"{c['case']}: {c['overlap']:.0%} of its n-grams in the tuning files"
                                          for c in f.contaminated]),
             ("Bad lines", f.bad_lines),
             ("Text of the examples listed (--show-text)", [f"{k}: {v!r}" for k, v in (texts or {}).items()])]
    for title, items in lists:
        if items:
            parts.append(f"<h2>{esc(title)}</h2><ul>" + "".join(f"<li>{esc(x)}</li>" for x in items) + "</ul>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Data checks</title><style>{CSS}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def report_json(f: DataFindings, texts: dict[str, str] | None = None) -> dict[str, Any]:
    """Return the report as JSON-able values."""
    return {**f.as_dict(), **({"texts": texts} if texts else {})}


def write_reports(f: DataFindings, directory: Path, texts: dict[str, str] | None = None) -> list[Path]:
    """Write report.md, report.html and report.json into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = [directory / "report.md", directory / "report.html", directory / "report.json"]
    out[0].write_text(render_markdown(f, texts), encoding="utf-8")
    out[1].write_text(render_html(f, texts), encoding="utf-8")
    out[2].write_bytes(orjson.dumps(report_json(f, texts), option=orjson.OPT_INDENT_2))
    return out

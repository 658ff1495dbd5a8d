"""The report as Markdown (every table through ``md_table``: a ``|`` in a cell is escaped)."""

from __future__ import annotations

from .report import Report
from .report_content import banners, power_line, sections, summary_lines, vocabulary_lines
from .report_format import md_table
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


def _verdict_lines(rep: Report) -> list[str]:
    v = rep.verdict
    if v is None:
        return ["**Verdict:** none", ""]
    if not v.reasons:
        return [f"**Verdict: {v.headline}.** {v.sentence}", ""]
    # the reasons are the sentence's parts: listed once, as a list
    out = [f"**Verdict: {v.headline}.**", ""] + [f"- {r.message}" for r in v.reasons]
    line = power_line(v)
    return out + ([f"- {line}"] if line else []) + [""]


def _segment_tables(rep: Report) -> list[str]:
    seg = rep.segments
    if seg is None:
        return []
    out = ["", "## Segments", "", segment_note(seg)]
    for dim in seg.dimensions:
        out += ["", f"### By {dim}", "", *md_table(SEGMENT_HEADER, segment_rows(seg, dim))]
    lines = heterogeneity_lines(seg)
    if lines:
        out += ["", "Heterogeneity (arm x segment interaction):", ""] + [f"- {line}" for line in lines]
    return out


def _serving_tables(rep: Report) -> list[str]:
    s = rep.serving
    if s is None:
        return []
    out = ["", "## Serving", "", serving_note(s)]
    rows = serving_rows(s)
    if rows:
        out += ["", *md_table(SERVING_HEADER, rows)]
    missing = missing_measures(s)
    if missing and not s.why:
        out += ["", f"No server exported: {', '.join(missing)}."]
    return [*out, "", "Model size:", "", *md_table(SIZE_HEADER, size_rows(s))]


def _other_tables(rep: Report) -> list[str]:
    """Return the segments, holdout, serving, drift, answers, shadow and rollout sections (those with data)."""
    out: list[str] = _segment_tables(rep)
    h = rep.holdout
    if h is not None:
        out += ["", "## Long-term holdout", "", HOLDOUT_NOTE]
        out += ["", *md_table(HOLDOUT_HEADER, holdout_rows(h))] if h.result else ["", f"Not compared: {h.why}."]
    if rep.interactions:
        out += ["", "## Interactions with concurrent experiments", "", INTERACTION_NOTE, "",
                *md_table(INTERACTION_HEADER, interaction_rows(rep))]
    out += _serving_tables(rep)
    if rep.drift:
        out += ["", "## Drift timeline", "", *md_table(DRIFT_HEADER, drift_rows(rep))]
    if rep.answers:
        out += ["", "## Answers per arm", "", *md_table(ANSWERS_HEADER, answer_rows(rep)), "", ANSWERS_NOTE]
    if rep.shadow:
        out += ["", "## Shadow traffic", "", *md_table(SHADOW_HEADER, shadow_rows(rep)), "", SHADOW_NOTE]
        if any(s.get("categories") for s in rep.shadow):
            out += ["", *md_table(SHADOW_CATEGORY_HEADER, shadow_category_rows(rep))]
    if rep.timeline:
        out += ["", "## Rollout timeline", "", *md_table(TIMELINE_HEADER, timeline_rows(rep))]
    return out


def to_markdown(rep: Report) -> str:
    """Return the report as Markdown."""
    v = rep.verdict
    out = [f"# splitwatch report: {rep.experiment.key}: {v.headline if v else 'no verdict'}", ""]
    out += _verdict_lines(rep)
    for level, text in banners(rep):
        out += [f"> **{'Error' if level == 'error' else 'Warning'}:** {text}", ""]
    out += [f"- {line}" for line in summary_lines(rep)]
    for title, header, rows, note in sections(rep):
        out += ["", f"## {title}", "", *md_table(header, rows)]
        if note:
            out += ["", note]
    out += _other_tables(rep)
    out += ["", "## Metric definitions", ""] + [f"- {line}" for line in vocabulary_lines(rep)]
    return "\n".join(out) + "\n"

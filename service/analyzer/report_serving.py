"""What the report says about the serving side, for every format (docs/serving.md)."""

from __future__ import annotations

from typing import Any

from ..serving.model_size import ModelSize
from ..serving.summary import ServingSummary
from .report import Report
from .report_format import fmt_count, fmt_num

SERVING_HEADER = ["measure", "arm", "mean", "max", "mean, to the control"]
SIZE_HEADER = ["arm", "model", "parameters", "dtype", "size", "source"]


def fmt_value(value: float, unit: str) -> str:
    """Return a serving figure in its unit: GiB, percent, milliseconds or a plain number."""
    if unit == "bytes":
        return f"{value / 2**30:.2f} GiB"
    if unit == "percentunit":
        return f"{value:.1%}"
    if unit == "s":
        return f"{value * 1000:.3g} ms"
    return fmt_num(value)


def serving_note(s: ServingSummary) -> str:
    """Return where the figures come from, or why there are none."""
    if s.why:
        return f"Serving: {s.why}."
    return (f"From Prometheus at {s.prometheus}, {s.start:%Y-%m-%d %H:%M} to {s.end:%Y-%m-%d %H:%M} UTC, one point "
            f"every {s.step_s:g} s: each arm's model servers and GPUs, joined through splitwatch_upstream_info. "
            "A ratio above 1 means the candidate's servers run hotter than the control's; load differs with each "
            "arm's share of the traffic, so read the queue and cache beside the requests running.")


def serving_rows(s: ServingSummary) -> list[list[str]]:
    """Return the measures' rows: one per measure and arm, the measures no server exported left out."""
    rows = []
    for m in s.measures:
        for a in m.arms:
            ratio = "" if a.ratio_to_control is None else f"{a.ratio_to_control:.2f}x"
            rows.append([m.series.title, a.arm, fmt_value(a.mean, m.series.unit), fmt_value(a.max, m.series.unit),
                         ratio])
    return rows


def missing_measures(s: ServingSummary) -> list[str]:
    """Return the titles of the measures no arm's server exported over the period."""
    return [m.series.title for m in s.measures if not m.arms]


def _size_cells(size: ModelSize) -> list[str]:
    params = "" if size.parameters is None else f"{size.parameters / 1e9:.3g} B"
    nbytes = "" if size.bytes is None else f"{size.bytes / 2**30:.2f} GiB"
    return [params, size.dtype or "", nbytes]


def size_rows(s: ServingSummary) -> list[list[str]]:
    """Return the model sizes' rows, one per arm."""
    return [[arm, size.model, *_size_cells(size), size.source if size.known else "not stated: set "
             "upstream.serving.model_size"] for arm, size in s.sizes.items()]


def serving_lines(s: ServingSummary) -> list[str]:
    """Return the one-line summaries of the results page: the candidates' ratios on the key measures."""
    if s.why:
        return [f"Serving: {s.why}"]
    keys = {"kv_cache_usage", "requests_waiting", "gpu_memory_bytes", "time_per_output_token_seconds"}
    parts = [f"{m.series.title.lower()} {a.ratio_to_control:.2f}x" for m in s.measures if m.series.key in keys
             for a in m.arms if a.ratio_to_control is not None]
    if not parts:
        return ["Serving: no model server or GPU series over the period"]
    return [f"Serving, each candidate's mean to the control's: {', '.join(parts)} "
            f"({fmt_count(sum(len(m.arms) for m in s.measures))} arm series)"]


def serving_json(rep: Report) -> dict[str, Any] | None:
    """Return the Serving section as JSON-ready data (None when the report did not read it)."""
    s = rep.serving
    if s is None:
        return None
    return {"prometheus": s.prometheus, "start": s.start.isoformat(), "end": s.end.isoformat(), "step_s": s.step_s,
            "why": s.why,
            "measures": [{"key": m.series.key, "title": m.series.title, "unit": m.series.unit,
                          "sources": m.series.sources,
                          "arms": [{"arm": a.arm, "mean": a.mean, "max": a.max, "points": a.points,
                                    "ratio_to_control": a.ratio_to_control} for a in m.arms]} for m in s.measures],
            "model_size": {arm: {"model": z.model, "parameters": z.parameters, "dtype": z.dtype, "bytes": z.bytes,
                                 "source": z.source if z.known else None,
                                 "problem": s.size_problems.get(arm)} for arm, z in s.sizes.items()}}

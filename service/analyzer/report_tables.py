"""The report's tables besides the metrics (drift, answers, shadow traffic, rollout timeline): headers,
notes and rows as text, the same for the Markdown and the HTML page."""

from __future__ import annotations

from typing import Any

from .report import Report
from .report_format import fmt_count, fmt_interval, fmt_num, fmt_p


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

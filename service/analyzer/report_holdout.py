"""What the report says about the long-term holdout, for every format (docs/holdout.md)."""

from __future__ import annotations

from typing import Any

from .holdout import EXPOSED_ARM, HoldoutComparison
from .kpi_queries import HOLDOUT_ARM
from .report import Report
from .report_format import fmt_count, fmt_interval, fmt_num, fmt_p

HOLDOUT_HEADER = ["metric", "role", "holdout", "everyone exposed", "effect of the experiment [CI]",
                  "relative [CI]", "p", "decision"]


def holdout_line(h: HoldoutComparison) -> str:
    """Return the holdout's size, time and split in one line (the results page's summary)."""
    c = h.config
    srm = "" if h.srm is None else (f"; its share: chi-square p = {fmt_p(h.srm.p_value)}, "
                                    f"{'MISMATCH' if h.srm.mismatch else 'ok'}")
    return (f"Long-term holdout: {c.share:.1%} of users (salt {c.salt!r}) kept on the control of every experiment "
            f"from {c.start.isoformat()} to {c.end.isoformat()}; this period {fmt_count(h.units[HOLDOUT_ARM])} "
            f"held out against {fmt_count(h.units[EXPOSED_ARM])} exposed{srm}")


HOLDOUT_NOTE = ("The holdout's users against everyone this experiment took (all arms together, as served): the "
                "effect of running the experiment, and of what it shipped, on the holdout's control. Same "
                "metric definitions, no CUPED; the holdout's share is checked among the users first exposed "
                "while it held.")


def holdout_rows(h: HoldoutComparison) -> list[list[str]]:
    """Return the holdout table's rows."""
    out = []
    for r in h.result.results if h.result else []:
        e = r.effect
        rel = fmt_interval(e.relative, *(e.relative_ci or (None, None)), percent=True) if e.relative is not None \
            else "n/a"
        out.append([r.metric, r.role, fmt_num(r.control.estimate), fmt_num(r.treatment.estimate),
                    fmt_interval(e.absolute, *e.absolute_ci), rel, fmt_p(r.p_value), r.decision])
    return out


def holdout_banner(rep: Report) -> tuple[str, str] | None:
    """Return the error to show when the holdout did not get its share, else None."""
    h = rep.holdout
    if h is None or h.srm is None or not h.srm.mismatch:
        return None
    return ("error", f"The long-term holdout did not get its {h.config.share:.1%} share (chi-square p = "
                     f"{fmt_p(h.srm.p_value)}): its comparison cannot be trusted until the cause is found.")


def holdout_json(rep: Report) -> dict[str, Any] | None:
    """Return the holdout as JSON-ready data (None without one)."""
    h = rep.holdout
    if h is None:
        return None
    c = h.config
    return {"share": c.share, "salt": c.salt, "start": c.start.isoformat(), "end": c.end.isoformat(),
            "units": {"holdout": h.units[HOLDOUT_ARM], "exposed": h.units[EXPOSED_ARM]},
            "srm": None if h.srm is None else {"p_value": h.srm.p_value, "mismatch": h.srm.mismatch,
                                               "observed": h.srm.observed, "expected": h.srm.expected},
            "why": h.why or None,
            "results": [{"metric": r.metric, "role": r.role, "holdout_value": r.control.estimate,
                         "exposed_value": r.treatment.estimate, "holdout_n": r.control.n, "exposed_n": r.treatment.n,
                         "absolute_effect": r.effect.absolute, "absolute_ci": list(r.effect.absolute_ci),
                         "relative_effect": r.effect.relative,
                         "relative_ci": list(r.effect.relative_ci) if r.effect.relative_ci else None,
                         "p_value": r.p_value, "decision": r.decision, "method": r.method}
                        for r in (h.result.results if h.result else [])]}

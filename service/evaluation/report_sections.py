"""The eval report's tables past the verdict, built once for Markdown and HTML alike.

Each :class:`Section` is a title, a sentence saying what it shows, a header and rows of text
(the verdict column, when there is one, is coloured on the page): the ranking, the generalisation
row, the slices, per-class precision and recall, code outcomes, and the judge's agreement with people.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..analyzer.report_format import fmt_count, fmt_interval, fmt_num, fmt_p
from .compare import METRICS, EvalResult
from .rubric import KAPPA_FLOOR, KAPPA_TRUSTED, MAX_LENIENCY, MAX_ORDER_INCONSISTENT, MIN_PAIRS


@dataclass
class Section:
    """A table of the report: its title, what it shows, its header and rows, the verdict column if any."""

    title: str
    note: str
    header: list[str]
    rows: list[list[str]]
    verdict_col: int | None = None
    sentences: list[str] = field(default_factory=list)


def percent_metric(metric: str) -> bool:
    """Return True when the metric's figures read as percentages."""
    spec = METRICS.get(metric)
    return metric == "judge_order_inconsistent" or (spec is not None and spec.unit == "share")


def _value(metric: str, v: float | None) -> str:
    return f"{fmt_num(v * 100)}%" if v is not None and percent_metric(metric) else fmt_num(v)


def ranking_section(res: EvalResult) -> Section | None:
    """Return the ranking of the arms on the primary metric, with rank intervals (three arms or more)."""
    if not res.ranking or res.primary_metric is None:
        return None
    m = res.primary_metric
    rows = [[str(i + 1), r.arm, _value(m, r.estimate), fmt_num(r.mean_rank), f"{r.rank_low:g} to {r.rank_high:g}",
             f"{r.p_best * 100:.0f}%"] for i, r in enumerate(res.ranking)]
    note = (f"Arms ranked on {m} ({METRICS[m].description}); the cases resampled {res.n_bootstrap:,} times, the "
            "arms ranked in each. Overlapping rank intervals: the data do not order those arms; the pairwise "
            "comparisons say which differences are significant.")
    return Section("Ranking", note, ["#", "arm", m, "mean rank", "95% rank interval", "ranked first"], rows)


def generalisation_section(res: EvalResult) -> Section | None:
    """Return the in-domain against out-of-domain row: each arm's gap, and whether each gain holds."""
    g = res.generalisation
    if g is None:
        return None
    pct = percent_metric(g.metric)
    rows = []
    for arm, v in g.arms.items():
        c = g.candidates.get(arm)
        rows.append([arm, _value(g.metric, v["in"]), _value(g.metric, v["out"]),
                     fmt_interval(v["gap"], v["gap_low"], v["gap_high"], percent=pct),
                     "control" if arm == res.control else (
                         f"{c['verdict_in']} in, {c['verdict_out']} out" if c else "n/a")])
    note = (f"{g.metric} in domain ({g.key}=in_domain) and out of domain ({g.key}=out_of_domain); the gap is in "
            "minus out (bootstrap within each group); the gains are the slices' paired tests (BH).")
    return Section("Generalisation: in domain against out of domain", note,
                   ["arm", "in domain", "out of domain", "gap [95% interval]", "gain over the control"], rows,
                   sentences=g.sentences)


def slices_section(res: EvalResult) -> Section | None:
    """Return every metric per slice, each candidate against the control, BH-corrected across slices."""
    if not res.slices and not res.small_slices:
        return None
    rows = []
    for c in res.slices:
        r, pct = c.result, percent_metric(c.metric)
        scale, unit = (100.0, "%") if pct else (1.0, "")
        rows.append([f"{c.key}={c.value}", fmt_count(c.cases), c.arm, c.metric, fmt_num(r.estimate_a * scale) + unit,
                     fmt_num(r.estimate_b * scale) + unit, fmt_interval(r.difference, r.low, r.high, percent=pct),
                     r.method, fmt_p(r.p_value), fmt_p(c.p_adjusted), c.verdict])
    small = "; ".join(f"{k}={v} ({n} cases)" for k, v, n in res.small_slices)
    note = (f"Each slice of the metadata, each candidate against {res.control}, the same paired tests as the whole "
            f"set; the {len(res.slices)} p-values corrected together with Benjamini-Hochberg"
            + (f" (bootstraps: {res.slice_n_bootstrap:,} resamples)" if res.slice_n_bootstrap else "") + "."
            + (f" Too small to test (under 10 cases): {small}." if small else ""))
    return Section("Slices", note, ["slice", "cases", "arm", "metric", "control", "arm's",
                                    "difference [95% interval]", "test", "p", "p (BH)", "verdict"], rows,
                   verdict_col=10)


def per_class_section(res: EvalResult) -> Section | None:
    """Return each label's precision, recall, F1 and support per arm, with the micro and macro averages."""
    if not res.labels:
        return None
    header = ["label", "support", *[f"{a} P / R / F1" for a in res.arms]]
    rows = []
    per = {a: res.per_arm[a].get("per_class") for a in res.arms if res.per_arm.get(a, {}).get("per_class")}
    if not per:
        return None
    first = next(iter(per.values()))
    for label in res.labels:
        cells = [label, str(first["labels"][label]["support"])]
        for a in res.arms:
            x = per[a]["labels"][label] if a in per else None
            cells.append(f"{x['precision']:.2f} / {x['recall']:.2f} / {x['f1']:.2f}" if x else "n/a")
        rows.append(cells)
    for avg in ("micro", "macro"):
        rows.append([f"({avg} average)", "", *(f"{per[a][avg]['precision']:.2f} / {per[a][avg]['recall']:.2f} / "
                                                f"{per[a][avg]['f1']:.2f}" if a in per else "n/a" for a in res.arms)])
    return Section("Per class", "Precision, recall and F1 per label (scikit-learn); an answer naming no label is "
                   "wrong for every label.", header, rows)


def code_section(res: EvalResult) -> Section | None:
    """Return the code tasks' outcomes per arm (pass, fail, syntax error, timeout, memory, blocked...)."""
    outcomes = {a: res.per_arm[a].get("code_outcomes") for a in res.arms if res.per_arm[a].get("code_outcomes")}
    if not outcomes:
        return None
    kinds = sorted({k for o in outcomes.values() for k in o})
    rows = [[a, *(str(outcomes[a].get(k, 0)) for k in kinds)] for a in outcomes]
    return Section("Code tasks", "Each answer's code run against its case's tests in a limited subprocess "
                   "(docs/eval.md: the limits and the threat model). blocked: it tried the network or to start a "
                   "process; not_run: the call failed.", ["arm", *kinds], rows)


def agreement_section(res: EvalResult) -> Section | None:
    """Return the judge's agreement with people per dimension, and whether it is trusted there."""
    if not res.agreement and not res.judge_pairwise_trusted:
        return None
    rows = []
    for a in res.agreement:
        rows.append([a.dimension, fmt_count(a.pairs), fmt_interval(a.kappa, a.kappa_low, a.kappa_high, signed=False),
                     fmt_interval(a.spearman, a.spearman_low, a.spearman_high, signed=False),
                     "n/a" if a.leniency is None else f"{a.leniency:+.2f}", "trusted" if a.trusted else "not trusted",
                     a.why])
    for arm, ok in res.judge_pairwise_trusted.items():
        share = res.per_arm[arm].get("judge_order_inconsistent")
        rows.append([f"pairwise preference ({arm})", fmt_count(res.per_arm[arm].get("judge_cases")), "", "", "",
                     "trusted" if ok else "not trusted",
                     f"order-inconsistent on {fmt_num(None if share is None else share * 100)}% of cases "
                     f"(at most {MAX_ORDER_INCONSISTENT:.0%} to be trusted)"])
    note = ("The judge's 1-5 ratings against people's on the same answers: quadratic-weighted Cohen's kappa and "
            "Spearman's rho with bootstrap intervals, and the judge's leniency (its mean minus people's). Trusted: "
            f"{MIN_PAIRS} pairs or more, kappa at least {KAPPA_TRUSTED} with its interval above {KAPPA_FLOOR}, "
            f"leniency under {MAX_LENIENCY} points.")
    return Section("Can the judge be trusted?", note, ["dimension", "pairs", "weighted kappa [95%]",
                                                       "Spearman [95%]", "leniency", "trust", "why"], rows)


def sections(res: EvalResult) -> list[Section]:
    """Return the report's sections past the comparisons, in reading order (those with something to show)."""
    found = (ranking_section(res), generalisation_section(res), slices_section(res), per_class_section(res),
             code_section(res), agreement_section(res))
    return [s for s in found if s is not None]

"""Seeded simulations of the whole decision (engine + verdict), looked at daily as a team would.

Each run grows per-arm sufficient statistics day by day and asks for the verdict after every day,
in sequential mode (the analyzer's live mode and the report's default). Tolerances: with R runs a
rate near 0.05 has a standard error of sqrt(0.05 * 0.95 / R) (0.011 at R = 400); the bounds below
are the issue's, and the measured rates sit well inside them (printed on failure).
"""

from __future__ import annotations

import numpy as np
from statsmodels.stats.proportion import confint_proportions_2indep

from splitwatch.stats import AnalysisOptions, MetricDefinition, SampleStats, analyze, decide

WEIGHTS = {"base": 1, "ft": 1}
DAYS = 14


def _metrics(margin: float) -> list[MetricDefinition]:
    return [MetricDefinition(name="resolved", kind="binary", role="primary"),
            MetricDefinition(name="csat", kind="continuous"),
            MetricDefinition(name="escalated", kind="binary", direction="decrease", role="guardrail", margin=margin)]


def _simulate(rng: np.random.Generator, runs: int, per_day: int, escalated: dict[str, float], margin: float,
              n_star: int) -> list[list[str]]:
    """Return, per run, the verdict of each of the 14 daily looks."""
    metrics = _metrics(margin)
    options = AnalysisOptions(sequential=True, srm_sequential=True, n_star=n_star)
    out = []
    for _ in range(runs):
        acc = {a: {"resolved": SampleStats(0, 0.0, 0.0), "csat": SampleStats(0, 0.0, 0.0),
                   "escalated": SampleStats(0, 0.0, 0.0)} for a in WEIGHTS}
        decisions = []
        for _day in range(DAYS):
            for arm in WEIGHTS:
                n = int(rng.binomial(2 * per_day, 0.5))  # the split itself is random, as in production
                acc[arm]["resolved"] += SampleStats.binary(n, int(rng.binomial(n, 0.30)))
                acc[arm]["escalated"] += SampleStats.binary(n, int(rng.binomial(n, escalated[arm])))
                acc[arm]["csat"] += SampleStats.from_values(rng.normal(3.8, 1.0, n))
            units = {a: acc[a]["resolved"].n for a in WEIGHTS}
            res = analyze(metrics, acc, "base", WEIGHTS, units, options)
            decisions.append(decide(res, metrics, units, WEIGHTS, "base", units_per_day=2 * per_day).decision)
        out.append(decisions)
    return out


def test_aa_with_daily_looks_rarely_ships_or_rolls_back() -> None:
    rng = np.random.default_rng(110)
    runs = _simulate(rng, 400, 500, {"base": 0.10, "ft": 0.10}, margin=0.02, n_star=14_000)
    ever = {d: float(np.mean([d in r for r in runs])) for d in ("ship", "roll_back", "invalid")}
    assert ever["ship"] <= 0.05, ever
    assert ever["roll_back"] <= 0.05, ever
    assert ever["invalid"] <= 0.02, ever  # SRM at alpha 0.001, sequential: rare under a fair split
    # and the guardrail, true harm 0 against a margin of 0.02, is shown non-inferior by day 14:
    # the A/A reaches keep_running for the primary only, not for the guardrail
    assert np.mean([r[-1] == "keep_running" for r in runs]) >= 0.9


def test_guardrail_harm_of_twice_its_margin_rolls_back_by_day_14() -> None:
    rng = np.random.default_rng(111)
    runs = _simulate(rng, 200, 3000, {"base": 0.10, "ft": 0.12}, margin=0.01, n_star=84_000)
    by_day_14 = float(np.mean(["roll_back" in r for r in runs]))
    assert by_day_14 >= 0.80, by_day_14
    assert not any("ship" in r for r in runs)


def test_rare_event_guardrail_is_never_non_inferior_while_its_interval_is_wider_than_the_margin() -> None:
    # A/A, 0.5% base rate, up to 300 units per arm (30 a day for 10 days), margin 0.01. Whatever the
    # mode, "non-inferior" must mean the harm's upper bound is under the margin, and the bound must
    # be honest: never below statsmodels' Newcombe 90% bound (fixed horizon) at the same data.
    rng = np.random.default_rng(112)
    metric = [MetricDefinition(name="escalated", kind="binary", direction="decrease", role="guardrail",
                               margin=0.01)]
    seen_ni = {False: 0, True: 0}
    for sequential in (False, True):
        options = AnalysisOptions(sequential=sequential, n_star=600, min_units_per_arm=30)
        for _ in range(300):
            c = t = SampleStats(0, 0.0, 0.0)
            for _day in range(10):
                c += SampleStats.binary(30, int(rng.binomial(30, 0.005)))
                t += SampleStats.binary(30, int(rng.binomial(30, 0.005)))
                res = analyze(metric, {"base": {"escalated": c}, "ft": {"escalated": t}}, "base", options=options)
                g = res.get("escalated", "ft").guardrail
                reference_upper = confint_proportions_2indep(int(t.sum), t.n, int(c.sum), c.n, method="newcomb",
                                                             alpha=0.10)[1]
                assert g.upper >= reference_upper - 1e-12, (sequential, c, t, g)
                if g.status == "non_inferior":
                    seen_ni[sequential] += 1
                    assert g.upper < 0.01 and reference_upper < 0.01
    # the confidence sequence, valid under monitoring, is the more cautious of the two
    assert seen_ni[True] < seen_ni[False], seen_ni

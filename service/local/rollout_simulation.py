"""Seeded simulations of the rollout guard: false rollbacks under A/A, time to rollback under harm.

Units arrive as a Poisson process (``units_per_day``), are split 50/50, and each has one binary
guardrail outcome (escalated: ``p_control``, plus ``harm`` in the candidate). At every look (daily,
or every minute as the live analyzer's default ``interval_s``) the guard gets its evidence and
:func:`splitwatch.service.analyzer.guard_policy.decide`, the live guard's rules, says whether it
rolls back. Evidence comes either from the full engine (``engine=True``: ``stats.analyze`` on
sufficient statistics, as the analyzer does) or, for the many looks of per-minute schedules, from the
same two functions the engine calls for this metric (the sequential binary guardrail bound and the
sequential and arm-count SRM checks); tests/test_rollout_simulation.py checks that both agree.
Used by tests/test_rollout_simulation.py (CI sizes) and bench/rollout_bench.py (docs/rollout.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from splitwatch.stats import AnalysisOptions, MetricDefinition, SampleStats, analyze
from splitwatch.stats._dist import norm_ppf
from splitwatch.stats.guardrails import agresti_caffo, rate_excess_lower_bound
from splitwatch.stats.srm import DEFAULT_SRM_ALPHA, srm_arm_counts, srm_sequential

from ..analyzer.guard_policy import Evidence, GuardMemory, decide, evidence_from_result
from ..config import RolloutConfig
from ..control.state import ExperimentState

ARMS = ("base", "finetuned")
WEIGHTS = {"base": 50.0, "finetuned": 50.0}


@dataclass(frozen=True)
class Scenario:
    """One simulated experiment: traffic, the guardrail's truth, and the guard's settings."""

    harm: float  # absolute excess of the candidate's guardrail rate over the control's
    looks_per_day: int  # 1: daily looks; 1440: every minute
    days: float = 14.0
    units_per_day: float = 1440.0
    p_control: float = 0.10
    margin: float = 0.01
    alpha: float = 0.05
    n_star: int = 10_000
    confirmations: int = 2
    min_units_to_act: int = 100


@dataclass(frozen=True)
class Outcome:
    """What happened in one simulated experiment."""

    rolled_back: bool
    reason: str | None = None
    days: float | None = None  # time from the start to the rollback
    units: int | None = None  # units in the experiment at the rollback


def _state() -> ExperimentState:
    return ExperimentState(experiment="sim", phase=1, revision=1, status="running", coverage=1.0,
                           action="coverage", actor="admin", reason="simulation", ts=datetime(2026, 1, 1, tzinfo=UTC),
                           change_id="sim")


def _fast_evidence(sc: Scenario, n0: int, x0: int, n1: int, x1: int) -> Evidence:
    """The evidence from the engine's own functions for this metric, without building a whole result."""
    units = {"base": n0, "finetuned": n1}
    breaches = []
    if min(n0, n1) >= 2:
        # Pre-filter: a confidence sequence is never narrower than the fixed-n one-sided bound (checked
        # in the tests), so a difference within z * sd of the margin cannot be a breach.
        difference, variance = agresti_caffo(x0, n0, x1, n1)
        if difference - sc.margin > norm_ppf(1 - sc.alpha) * math.sqrt(variance):
            lower = rate_excess_lower_bound(x0, n0, x1, n1, sc.alpha, sc.n_star)
            if lower > sc.margin:
                breaches.append({"test": "guardrail", "metric": "escalated", "arm": "finetuned",
                                 "harm": x1 / n1 - x0 / n0, "lower": lower, "upper": math.inf,
                                 "margin": sc.margin, "relative": False, "alpha": sc.alpha, "method": "sim"})
    srm = None
    for test in (srm_sequential(units, WEIGHTS, DEFAULT_SRM_ALPHA) if n0 + n1 > 0 else None,
                 srm_arm_counts(units, WEIGHTS)):
        if test is not None and test.mismatch:
            srm = {"test": "srm", "method": test.method, "p_value": test.p_value, "observed": dict(test.observed),
                   "expected": dict(test.expected), "arms": list(test.arms)}
            break
    return Evidence(units, 0, breaches, srm)


def engine_evidence(sc: Scenario, n0: int, x0: int, n1: int, x1: int) -> Evidence:
    """The evidence from the full engine, as the live analyzer builds it."""
    units = {"base": n0, "finetuned": n1}
    if min(n0, n1) < 2:
        return Evidence(units, 0)
    metric = MetricDefinition(name="escalated", kind="binary", direction="decrease", role="guardrail",
                              margin=sc.margin)
    options = AnalysisOptions(sequential=True, n_star=sc.n_star, srm_sequential=True, guardrail_alpha=sc.alpha,
                              min_units_per_arm=sc.min_units_to_act)
    result = analyze([metric], {"base": {"escalated": SampleStats(n0, x0, x0)},
                                "finetuned": {"escalated": SampleStats(n1, x1, x1)}},
                     control="base", weights=WEIGHTS, units=units, options=options)
    return evidence_from_result(result, units, 0)


def run_once(sc: Scenario, rng: np.random.Generator, engine: bool = False) -> Outcome:
    """Simulate one experiment to its horizon or its rollback."""
    n_units = rng.poisson(sc.units_per_day * sc.days)
    arrival = np.sort(rng.uniform(0, sc.days, n_units))
    in_candidate = rng.random(n_units) < 0.5
    p = np.where(in_candidate, sc.p_control + sc.harm, sc.p_control)
    escalated = rng.random(n_units) < p
    looks = np.arange(1, round(sc.days * sc.looks_per_day) + 1) / sc.looks_per_day
    upto = np.searchsorted(arrival, looks, side="right")
    cum_cand = np.concatenate([[0], np.cumsum(in_candidate)])
    cum_x1 = np.concatenate([[0], np.cumsum(escalated & in_candidate)])
    cum_x0 = np.concatenate([[0], np.cumsum(escalated & ~in_candidate)])
    rollout = RolloutConfig(auto_rollback=True, confirmations=sc.confirmations, min_units_to_act=sc.min_units_to_act)
    state, memory = _state(), GuardMemory()
    evidence_of = engine_evidence if engine else _fast_evidence
    last_key, ev = None, Evidence({"base": 0, "finetuned": 0}, 0)
    for t, k in zip(looks, upto, strict=True):
        n1, x1, x0 = int(cum_cand[k]), int(cum_x1[k]), int(cum_x0[k])
        key = (int(k), x0, x1)
        if key != last_key:  # no new unit since the last look: the same evidence again
            ev, last_key = evidence_of(sc, int(k) - n1, x0, n1, x1), key
        action = decide(rollout, state, ev, state.ts + timedelta(days=float(t)), memory)
        if action is not None and action.rollback is not None:
            return Outcome(True, action.rollback, float(t), int(k))
    return Outcome(False)


def simulate(sc: Scenario, reps: int, seed: int, engine: bool = False) -> list[Outcome]:
    """Return the outcomes of ``reps`` seeded experiments."""
    rng = np.random.default_rng(seed)
    return [run_once(sc, rng, engine) for _ in range(reps)]


def summarise(outcomes: list[Outcome]) -> dict[str, float | int | None]:
    """Return the rollback rate (with its Wilson 95% upper bound) and the time and units to a rollback."""
    n = len(outcomes)
    hits = [o for o in outcomes if o.rolled_back]
    rate = len(hits) / n
    z = 1.959963984540054
    upper = (rate + z * z / (2 * n) + z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    days = np.array([o.days for o in hits if o.days is not None], dtype=float)
    units = np.array([o.units for o in hits if o.units is not None], dtype=float)
    return {"reps": n, "rollbacks": len(hits), "rate": rate, "rate_upper95": upper,
            "srm_rollbacks": sum(1 for o in hits if o.reason == "srm"),
            "median_days": float(np.median(days)) if len(days) else None,
            "p90_days": float(np.quantile(days, 0.9)) if len(days) else None,
            "median_units": float(np.median(units)) if len(units) else None}


@dataclass(frozen=True)
class FastScenario:
    """One simulated fast path: request failure rates of both arms, and how often the guard looks."""

    p_control: float
    p_candidate: float
    requests_per_arm: int = 20_000
    look_every: int = 25  # requests per arm between looks (an ingested batch)
    margin: float = 0.05
    alpha: float = 0.001
    min_requests: int = 50


def run_fast_once(sc: FastScenario, rng: np.random.Generator) -> Outcome:
    """Simulate one window of the fast path to its end or its rollback (``units`` = requests per arm)."""
    from ..analyzer.fast_path import FailureMonitor
    from ..config import FastRollbackConfig, parse_config

    arms = [{"name": a, "weight": 50, "upstream": {"base_url": "http://stub/v1", "model": a}} for a in ARMS]
    exp = parse_config({"experiments": [{"key": "sim", "model": "sim", "arms": arms}]}, environ={}).experiments[0]
    fast = FastRollbackConfig(margin=sc.margin, alpha=sc.alpha, min_requests=sc.min_requests)
    monitor = FailureMonitor(exp, None)
    f0 = np.cumsum(rng.random(sc.requests_per_arm) < sc.p_control)
    f1 = np.cumsum(rng.random(sc.requests_per_arm) < sc.p_candidate)
    for n in range(sc.look_every, sc.requests_per_arm + 1, sc.look_every):
        c, t = monitor.counts["base"], monitor.counts["finetuned"]
        c.requests, c.failures = n, int(f0[n - 1])
        t.requests, t.failures = n, int(f1[n - 1])
        if monitor.breach(fast) is not None:
            return Outcome(True, "failures", None, n)
    return Outcome(False)


def simulate_fast(sc: FastScenario, reps: int, seed: int) -> list[Outcome]:
    """Return the outcomes of ``reps`` seeded fast-path windows."""
    rng = np.random.default_rng(seed)
    return [run_fast_once(sc, rng) for _ in range(reps)]

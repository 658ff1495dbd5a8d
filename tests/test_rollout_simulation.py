"""Seeded simulations of the rollout guard's decisions (CI sizes; bench/rollout_bench.py runs the large ones).

The guard must not roll back an A/A (false rollbacks at most its alpha, with daily or per-minute
looks), must roll back real harm, sooner the larger it is, and its fast path must catch an
endpoint that fails outright within a few hundred requests while staying quiet on equal failures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from splitwatch.service.local.rollout_simulation import (
    FastScenario,
    Scenario,
    _fast_evidence,
    engine_evidence,
    simulate,
    simulate_fast,
    summarise,
)
from splitwatch.stats._dist import norm_ppf
from splitwatch.stats.sequential import one_sided_halfwidth


def test_the_fast_evidence_is_the_engines() -> None:
    """The per-minute simulations use the engine's functions directly: same breaches, same bounds."""
    rng = np.random.default_rng(5)
    sc = Scenario(harm=0.0, looks_per_day=1)
    breaches = 0
    for _ in range(300):
        n0, n1 = (int(x) for x in rng.integers(2, 5000, 2))
        p0 = rng.uniform(0.01, 0.3)
        x0 = int(rng.binomial(n0, p0))
        x1 = int(rng.binomial(n1, min(1.0, p0 + rng.choice([0.0, 0.02, 0.05, 0.1]))))
        fast, full = _fast_evidence(sc, n0, x0, n1, x1), engine_evidence(sc, n0, x0, n1, x1)
        assert [b["arm"] for b in fast.breaches] == [b["arm"] for b in full.breaches], (n0, x0, n1, x1)
        for f, e in zip(fast.breaches, full.breaches, strict=True):
            assert f["lower"] == pytest.approx(e["lower"], abs=1e-12)
        assert (fast.srm is None) == (full.srm is None)
        breaches += len(full.breaches)
    assert breaches > 20  # the comparison saw breaches, not only quiet cases


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.001])
def test_a_confidence_sequence_is_never_narrower_than_the_fixed_bound(alpha: float) -> None:
    """What the simulation's pre-filter relies on: h(V, n) >= z_(1-alpha) * sqrt(V) for every n."""
    for n in (4, 10, 100, 1_000, 10_000, 100_000, 10_000_000):
        for v in (1e-6, 1e-4, 1e-2):
            assert one_sided_halfwidth(v, n, alpha, 10_000) >= norm_ppf(1 - alpha) * math.sqrt(v)


def test_no_false_rollback_on_an_a_a_with_daily_or_per_minute_looks() -> None:
    daily = summarise(simulate(Scenario(harm=0.0, looks_per_day=1), reps=400, seed=11, engine=True))
    minute = summarise(simulate(Scenario(harm=0.0, looks_per_day=1440, days=7), reps=30, seed=12))
    print("\nA/A daily:", daily, "\nA/A per minute:", minute)
    assert daily["rate"] <= 0.05 and minute["rate"] <= 0.05
    # at the null's worst case (harm exactly at the margin) the rate is still at most alpha
    boundary = summarise(simulate(Scenario(harm=0.01, looks_per_day=1), reps=400, seed=13, engine=True))
    print("harm = margin, daily:", boundary)
    assert boundary["rate"] <= 0.05


def test_harm_is_rolled_back_and_larger_harm_sooner() -> None:
    medians = []
    for harm in (0.03, 0.05, 0.10):
        s = summarise(simulate(Scenario(harm=harm, looks_per_day=1440, days=7), reps=15, seed=21))
        print(f"\nharm {harm}: {s}")
        assert s["rate"] >= (0.6 if harm == 0.03 else 1.0)  # 3x the margin: not always within 7 days
        medians.append(s["median_days"])
    assert medians[0] > medians[1] > medians[2]
    assert medians[2] < 1.0  # ten points of harm: rolled back within the first day


def test_the_fast_path_catches_outright_failure_and_stays_quiet_otherwise() -> None:
    quiet = summarise(simulate_fast(FastScenario(0.02, 0.02, 10_000), reps=30, seed=31))
    assert quiet["rollbacks"] == 0
    # measured at alpha = 0.05, where a rate can be seen, at the null's worst case (excess = margin)
    worst = summarise(simulate_fast(FastScenario(0.02, 0.07, 4_000, alpha=0.05), reps=200, seed=32))
    print("\nfast path, excess = margin, alpha 0.05:", worst)
    assert worst["rate"] <= 0.05
    failing = summarise(simulate_fast(FastScenario(0.01, 0.30, 2_000), reps=50, seed=33))
    print("fast path, 30% vs 1%:", failing)
    assert failing["rate"] == 1.0 and failing["median_units"] <= 150

"""Seeded simulations: error rates and coverage of the engine's tests are what they claim.

Tolerances: with S simulations a rate near 0.05 has a standard error of sqrt(0.05*0.95/S); bounds
are set about 3 standard errors wide, so each test fails by chance well under 1% of the time
(and never, being seeded).
"""

from __future__ import annotations

import numpy as np
import pytest

from splitwatch.stats import (
    QuantileStats,
    RatioStats,
    RegressionStats,
    SampleStats,
    compare,
    compare_proportions,
    compare_sequential,
    cuped_estimates,
    quantile_stats,
    srm_sequential,
)
from splitwatch.stats.estimates import binary_estimate, mean_estimate, quantile_estimate, ratio_estimate
from splitwatch.stats.quantile import clustered_quantile_stats

ALPHA = 0.05


def _rate(hits: list[bool]) -> float:
    return float(np.mean(hits))


def test_aa_false_positive_rates_and_coverage_of_fixed_horizon_tests() -> None:
    rng = np.random.default_rng(10)
    sims = 2000
    prop_fp, welch_fp, ratio_fp, prop_cover, welch_cover = [], [], [], [], []
    for _ in range(sims):
        # binary, A/A at 20%
        c, t = rng.binomial(1, 0.2, 800), rng.binomial(1, 0.2, 800)
        e = compare_proportions(SampleStats.binary(800, int(c.sum())), SampleStats.binary(800, int(t.sum())))
        prop_fp.append(e.p_value < ALPHA)
        # binary with a true effect of +3 points: coverage of the z interval
        t2 = rng.binomial(1, 0.23, 800)
        e2 = compare_proportions(SampleStats.binary(800, int(c.sum())), SampleStats.binary(800, int(t2.sum())))
        prop_cover.append(e2.absolute_ci[0] <= 0.03 <= e2.absolute_ci[1])
        # continuous, skewed (CSAT-like would be bounded; take exponential spend), small samples, unequal n
        a, b = rng.exponential(10, 60), rng.exponential(10, 90) + 1.5
        w = compare(mean_estimate(SampleStats.from_values(a)), mean_estimate(SampleStats.from_values(b)),
                    method="welch")
        welch_cover.append(w.absolute_ci[0] <= 1.5 <= w.absolute_ci[1])
        w0 = compare(mean_estimate(SampleStats.from_values(a)),
                     mean_estimate(SampleStats.from_values(rng.exponential(10, 90))), method="welch")
        welch_fp.append(w0.p_value < ALPHA)
        # ratio metric, A/A: resolutions per conversation
        d0, d1 = rng.poisson(2, 500) + 1, rng.poisson(2, 500) + 1
        r = compare(ratio_estimate(RatioStats.from_values(rng.binomial(d0, 0.4), d0)),
                    ratio_estimate(RatioStats.from_values(rng.binomial(d1, 0.4), d1)))
        ratio_fp.append(r.p_value < ALPHA)
    for name, rate in [("proportions", _rate(prop_fp)), ("welch", _rate(welch_fp)), ("ratio", _rate(ratio_fp))]:
        assert 0.035 <= rate <= 0.065, (name, rate)
    for name, rate in [("proportions_z", _rate(prop_cover)), ("welch", _rate(welch_cover))]:
        assert 0.935 <= rate <= 0.965, (name, rate)


def test_sequential_test_survives_peeking_and_the_fixed_test_does_not() -> None:
    rng = np.random.default_rng(11)
    sims, looks, batch = 600, 20, 250
    fixed_fp, seq_fp = [], []
    for _ in range(sims):
        c = rng.binomial(1, 0.3, looks * batch)
        t = rng.binomial(1, 0.3, looks * batch)
        fixed_hit = seq_hit = False
        for k in range(1, looks + 1):
            n = k * batch
            sc, stt = SampleStats.binary(n, int(c[:n].sum())), SampleStats.binary(n, int(t[:n].sum()))
            fixed_hit |= compare_proportions(sc, stt).p_value < ALPHA
            seq_hit |= compare_sequential(binary_estimate(sc), binary_estimate(stt), ALPHA,
                                          n_star=looks * batch * 2).p_value < ALPHA
        fixed_fp.append(fixed_hit)
        seq_fp.append(seq_hit)
    # Peeking 20 times at a fixed-horizon test inflates its error far above alpha (theory: ~0.25) ...
    assert _rate(fixed_fp) > 0.15
    # ... while the always-valid test stays under alpha (3 standard errors of slack: 0.027).
    assert _rate(seq_fp) <= ALPHA + 0.027
    # and it still finds a real effect
    c = rng.binomial(1, 0.30, 20000)
    t = rng.binomial(1, 0.33, 20000)
    e = compare_sequential(binary_estimate(SampleStats.binary(20000, int(c.sum()))),
                           binary_estimate(SampleStats.binary(20000, int(t.sum()))), ALPHA, n_star=40000)
    assert e.p_value < ALPHA and e.absolute_ci[0] > 0


def test_cuped_shrinks_the_variance_of_the_effect() -> None:
    rng = np.random.default_rng(12)
    raw, adjusted = [], []
    for _ in range(400):
        x0, x1 = rng.normal(0, 1, 1000), rng.normal(0, 1, 1000)
        y0 = x0 * 0.8 + rng.normal(0, 0.6, 1000)  # corr(x, y) = 0.8
        y1 = x1 * 0.8 + rng.normal(0, 0.6, 1000) + 0.05
        arms = {"c": RegressionStats.from_values(y0, x0), "t": RegressionStats.from_values(y1, x1)}
        est = cuped_estimates(arms)
        raw.append(y1.mean() - y0.mean())
        adjusted.append(est["t"].mean - est["c"].mean)
    # var ratio ~ 1 - rho^2 = 0.36; both unbiased for 0.05
    assert np.var(adjusted) / np.var(raw) < 0.5
    assert abs(np.mean(adjusted) - 0.05) < 3 * np.std(adjusted) / np.sqrt(400)


def test_quantile_difference_interval_covers_the_true_difference() -> None:
    rng = np.random.default_rng(13)
    p = 0.95
    true_diff = float(np.exp(0.2 + 1.6449 * 0.5) - np.exp(1.6449 * 0.5))  # p95 of lognormal(0.2, .5) - (0, .5)
    covered = []
    for _ in range(400):
        a = rng.lognormal(0.0, 0.5, 3000)
        b = rng.lognormal(0.2, 0.5, 3000)
        e = compare(quantile_estimate(quantile_stats(a, p)), quantile_estimate(quantile_stats(b, p)))
        covered.append(e.absolute_ci[0] <= true_diff <= e.absolute_ci[1])
    assert 0.92 <= _rate(covered) <= 0.98
    assert isinstance(quantile_stats(a, p), QuantileStats)


def _clustered_latencies(rng: np.random.Generator, units: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (latencies, unit of each) where a user's requests share a user-level slowness."""
    per_unit = 1 + rng.poisson(9, units)
    unit_of = np.repeat(np.arange(units), per_unit)
    slowness = rng.normal(0.0, 0.5, units)[unit_of]
    return np.exp(6.5 + slowness + rng.normal(0.0, 0.3, unit_of.size)), unit_of


@pytest.mark.parametrize("p", [0.5, 0.95])
def test_quantile_interval_keeps_its_coverage_when_requests_cluster_in_users(p: float) -> None:
    rng = np.random.default_rng(16)
    naive_cover, clustered_cover, deffs = [], [], []
    for _ in range(400):  # A/A: both arms from one distribution, the true difference is 0
        (a, ua), (b, ub) = _clustered_latencies(rng, 300), _clustered_latencies(rng, 300)
        naive = compare(quantile_estimate(quantile_stats(a, p)), quantile_estimate(quantile_stats(b, p)))
        qa, qb = clustered_quantile_stats(a, ua, p), clustered_quantile_stats(b, ub, p)
        clustered = compare(quantile_estimate(qa), quantile_estimate(qb))
        naive_cover.append(naive.absolute_ci[0] <= 0 <= naive.absolute_ci[1])
        clustered_cover.append(clustered.absolute_ci[0] <= 0 <= clustered.absolute_ci[1])
        deffs += [qa.design_effect, qb.design_effect]
    # ten requests per user sharing most of their variance: independence badly overstates precision
    # (measured: naive coverage 0.59 at both quantiles; with the design effect 0.950 and 0.953)
    assert _rate(naive_cover) < 0.85 and np.mean(deffs) > 2
    assert 0.92 <= _rate(clustered_cover) <= 0.98


def test_quantile_design_effect_is_one_for_one_request_per_unit() -> None:
    rng = np.random.default_rng(17)
    values = rng.lognormal(0.0, 0.5, 5000)
    q = clustered_quantile_stats(values, np.arange(values.size), 0.9)
    assert q.design_effect == pytest.approx(1.0, abs=1e-3)  # the floor, or within n/(n-1) of it
    plain = quantile_stats(values, 0.9)
    assert (q.estimate, q.lower, q.upper) == (plain.estimate, plain.lower, plain.upper)


def test_sequential_srm_error_rate_and_power() -> None:
    rng = np.random.default_rng(14)
    alpha = 0.05
    hits = []
    for _ in range(400):
        assign = rng.random(20000) < 0.5
        hit = False
        for n in range(1000, 20001, 1000):  # checked after every 1,000 units
            a = int(assign[:n].sum())
            hit |= srm_sequential({"a": a, "b": n - a}, {"a": 1, "b": 1}, alpha).p_value < alpha
        hits.append(hit)
    assert _rate(hits) <= alpha + 0.033
    imbalanced = rng.random(20000) < 0.52
    res = srm_sequential({"a": int(imbalanced.sum()), "b": int((~imbalanced).sum())}, {"a": 1, "b": 1})
    assert res.mismatch and res.p_value < 0.001

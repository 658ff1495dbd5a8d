"""The statistics engine against independent references: published worked examples, scipy and
statsmodels closed forms, and direct computation on raw data. Each tolerance is stated."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    power_proportions_2indep,
    proportion_confint,
)
from statsmodels.stats.proportion import (
    test_proportions_2indep as sm_test_proportions_2indep,
)

from splitwatch.stats import (
    InvalidStatistics,
    RatioStats,
    RegressionStats,
    SampleStats,
    adjust_p_values,
    compare,
    compare_proportions,
    cuped_estimates,
    cuped_theta,
    mde_means,
    mde_proportions,
    newcombe_interval,
    power_means,
    sample_size_means,
    sample_size_proportions,
    srm_chi_square,
    summarise,
    wilson_interval,
)
from splitwatch.stats.estimates import binary_estimate, mean_estimate, ratio_estimate
from splitwatch.stats.sequential import always_valid_p, boundary

# R's `sleep` data set (Cushny and Peebles 1905, as printed by R's datasets package).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_welch_matches_r_t_test_on_sleep() -> None:
    # Source: R, `t.test(extra ~ group, data = sleep)` (Welch Two Sample t-test):
    # t = -1.8608, df = 17.776, p-value = 0.07939, 95% CI -3.3654832 0.2054832.
    # R reports group 1 minus group 2, so group 2 is our control. Tolerance: R's printed digits.
    eff = compare(mean_estimate(SampleStats.from_values(SLEEP_2)), mean_estimate(SampleStats.from_values(SLEEP_1)),
                  0.05, "welch")
    assert eff.statistic == pytest.approx(-1.8608, abs=5e-5)
    assert eff.df == pytest.approx(17.776, abs=5e-4)
    assert eff.p_value == pytest.approx(0.07939, abs=5e-6)
    assert eff.absolute_ci == pytest.approx((-3.3654832, 0.2054832), abs=5e-8)
    # and scipy's implementation, to machine precision
    ref = st.ttest_ind(SLEEP_1, SLEEP_2, equal_var=False)
    assert eff.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert eff.p_value == pytest.approx(ref.pvalue, rel=1e-10)


def test_two_proportion_z_and_newcombe_interval() -> None:
    # Source: Newcombe (1998), "Interval estimation for the difference between independent
    # proportions", Stat Med 17:873-890, Table II example (a): 56/70 - 48/80, method 10 (hybrid
    # score): 0.0524 to 0.3339. Tolerance: the paper's 4 decimals.
    control, treatment = SampleStats.binary(80, 48), SampleStats.binary(70, 56)
    assert newcombe_interval(control, treatment, 0.05) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    # statsmodels: same interval (1e-10)
    ref_ci = confint_proportions_2indep(56, 70, 48, 80, method="newcomb", compare="diff")
    assert newcombe_interval(control, treatment, 0.05) == pytest.approx(ref_ci, abs=1e-10)
    # The test is the unpooled (Wald) z-test, its CI the same z interval: statsmodels'
    # test_proportions_2indep(method="wald") and confint_proportions_2indep(method="wald"), to 1e-12.
    eff = compare_proportions(control, treatment)
    assert eff.absolute == pytest.approx(0.2, abs=1e-12)
    ref = sm_test_proportions_2indep(56, 70, 48, 80, method="wald", compare="diff")
    assert eff.statistic == pytest.approx(ref.statistic, rel=1e-12) and eff.p_value == pytest.approx(ref.pvalue,
                                                                                                     rel=1e-12)
    assert eff.absolute_ci == pytest.approx(confint_proportions_2indep(56, 70, 48, 80, method="wald"), abs=1e-12)
    # one convention: the statistic is the effect over the reported standard error
    assert eff.statistic == pytest.approx(eff.absolute / eff.se, rel=1e-15)
    for count, n in [(0, 20), (1, 50), (48, 80), (30, 30)]:
        assert wilson_interval(count, n, 0.05) == pytest.approx(
            proportion_confint(count, n, method="wilson"), abs=1e-12)


def test_ratio_delta_method_against_raw_linearisation_and_bootstrap() -> None:
    rng = np.random.default_rng(1)
    conversations = rng.poisson(3, 4000) + 1
    resolved = rng.binomial(conversations, 0.4)
    r = RatioStats.from_values(resolved, conversations)
    est = ratio_estimate(r)
    assert est.mean == pytest.approx(resolved.sum() / conversations.sum(), rel=1e-12)
    # Independent path: the linearised per-unit values (x - R y) / mean(y) (Deng et al. 2018).
    ratio = resolved.sum() / conversations.sum()
    lin = (resolved - ratio * conversations) / conversations.mean()
    assert est.variance == pytest.approx(lin.var(ddof=1) / lin.size, rel=1e-9)
    # A bootstrap of the ratio agrees within 10% (2,000 resamples, seeded).
    idx = rng.integers(0, resolved.size, (2000, resolved.size))
    boot = resolved[idx].sum(1) / conversations[idx].sum(1)
    assert est.variance == pytest.approx(boot.var(ddof=1), rel=0.10)


def test_cuped_theta_adjustment_and_variance_reduction() -> None:
    rng = np.random.default_rng(2)
    n = 5000
    x0, x1 = rng.normal(10, 3, n), rng.normal(10, 3, n)
    y0 = 2 + 0.8 * x0 + rng.normal(0, 2, n)
    y1 = 2.3 + 0.8 * x1 + rng.normal(0, 2, n)  # true effect 0.3
    arms = {"c": RegressionStats.from_values(y0, x0), "t": RegressionStats.from_values(y1, x1)}
    theta = cuped_theta(arms)
    # theta is the least-squares slope on all units together (numpy's polyfit, independent path)
    assert theta == pytest.approx(np.polyfit(np.r_[x0, x1], np.r_[y0, y1], 1)[0], rel=1e-9)
    est = cuped_estimates(arms)
    xbar = np.r_[x0, x1].mean()
    for name, y, x in (("c", y0, x0), ("t", y1, x1)):
        adj = y - theta * (x - xbar)
        assert est[name].mean == pytest.approx(adj.mean(), rel=1e-10)
        assert est[name].variance == pytest.approx(adj.var(ddof=1) / n, rel=1e-8)
    raw = compare(mean_estimate(arms["c"].y), mean_estimate(arms["t"].y), method="welch")
    adj_eff = compare(est["c"], est["t"])
    rho2 = np.corrcoef(np.r_[x0, x1], np.r_[y0, y1])[0, 1] ** 2
    # variance shrinks by about (1 - rho^2): within 5%
    assert (adj_eff.se / raw.se) ** 2 == pytest.approx(1 - rho2, rel=0.05)
    assert adj_eff.absolute_ci[0] < 0.3 < adj_eff.absolute_ci[1]


def test_sequential_boundary_is_the_normal_mixture_sprt() -> None:
    # Closed form of Johari, Pekelis and Walsh (2017), "Always valid inference", eq. (11):
    # Lambda = sqrt(V/(V+tau2)) exp(tau2 d^2 / (2V(V+tau2))); reject when Lambda >= 1/alpha.
    v, tau2 = 0.01, 0.05
    for d in (0.0, 0.1, 0.3, -0.45):
        lam = math.sqrt(v / (v + tau2)) * math.exp(tau2 * d * d / (2 * v * (v + tau2)))
        assert always_valid_p(d, v, tau2) == pytest.approx(min(1.0, 1 / lam), rel=1e-12)
    # At the confidence sequence's edge the mixture likelihood ratio is exactly 1/alpha.
    b = boundary(variance=0.01, n=2000, alpha=0.05, n_star=2000)
    assert always_valid_p(b.halfwidth, 0.01, b.tau2) == pytest.approx(0.05, rel=1e-9)


def test_srm_chi_square_matches_scipy() -> None:
    res = srm_chi_square({"a": 5120, "b": 4880}, {"a": 50, "b": 50})
    assert res.p_value == pytest.approx(st.chisquare([5120, 4880], [5000, 5000]).pvalue, rel=1e-12)
    assert res.p_value == pytest.approx(0.01639, abs=5e-5)  # chi2 = 5.76 on 1 df


def test_multiple_testing_hand_computed() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted p * (4, 3, 2, 1) = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted p * 4 / (1, 2, 3, 4) = 0.02, 0.02, 0.04, 0.04 -> running min from the top
    assert adjust_p_values(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust_p_values(p, "bh") == pytest.approx(list(multipletests(p, method="fdr_bh")[1]))
    assert adjust_p_values(p, "none") == p


def test_bayesian_summary_against_monte_carlo() -> None:
    c, t = mean_estimate(SampleStats.from_values(SLEEP_2)), mean_estimate(SampleStats.from_values(SLEEP_1))
    s = summarise(c, t, "decrease")
    draws = np.random.default_rng(3).normal(t.mean - c.mean, math.sqrt(c.variance + t.variance), 400_000)
    assert s.chance_to_win == pytest.approx((draws < 0).mean(), abs=0.003)
    assert s.expected_loss == pytest.approx(np.maximum(draws, 0).mean(), rel=0.02)  # harm = increase


def test_planning_against_statsmodels() -> None:
    # means: statsmodels' NormalIndPower solves the same normal-approximation equation
    n0, n1 = sample_size_means(effect=0.5, sd=2.0)
    ref = NormalIndPower().solve_power(effect_size=0.25, alpha=0.05, power=0.8, ratio=1.0)
    assert n0 == n1 == math.ceil(ref)
    assert power_means(0.5, 2.0, n0, n1) == pytest.approx(
        NormalIndPower().power(effect_size=0.25, nobs1=n0, alpha=0.05), rel=1e-9)
    assert power_means(mde_means(2.0, 1000, 1000), 2.0, 1000, 1000) == pytest.approx(0.8, abs=1e-4)
    # proportions: at the computed size statsmodels' power is just above 0.8
    n0, n1 = sample_size_proportions(baseline=0.30, effect=0.03)
    pw = power_proportions_2indep(0.03, 0.30, n0, ratio=1.0, alpha=0.05).power
    assert 0.8 <= pw < 0.801
    d = mde_proportions(0.30, n0, n1)
    assert d == pytest.approx(0.03, rel=1e-3)


def test_merging_statistics_is_addition() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=100), rng.normal(size=250)
    merged = SampleStats.from_values(a) + SampleStats.from_values(b)
    whole = SampleStats.from_values(np.r_[a, b])
    assert merged.n == whole.n and merged.mean == pytest.approx(whole.mean) and merged.variance == pytest.approx(
        whole.variance)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: SampleStats(-1, 0.0, 0.0), "non-negative"),
    (lambda: SampleStats(10, 5.0, 1.0), "variance would be negative"),
    (lambda: SampleStats(0, 1.0, 1.0), "n is 0"),
    (lambda: SampleStats(3, float("nan"), 1.0), "finite"),
    (lambda: SampleStats(2.5, 1.0, 1.0), "whole number"),
    (lambda: SampleStats.binary(10, 11), "cannot exceed"),
    (lambda: SampleStats(0, 0.0, 0.0).mean, "at least 1"),
    (lambda: SampleStats(1, 1.0, 1.0).variance, "at least 2"),
    (lambda: RatioStats(3, 3.0, 5.0, 3.0, 5.0, 100.0), "correlation"),
    (lambda: RatioStats(3, 3.0, 5.0, 0.0, 0.0, 0.0).ratio, "denominator"),
    (lambda: compare_proportions(SampleStats(10, 5.0, 9.0), SampleStats.binary(10, 5)), "0/1"),
])
def test_impossible_statistics_are_refused_with_a_reason(make, message: str) -> None:
    with pytest.raises(InvalidStatistics, match=message):
        make()


def test_capping_and_duration() -> None:
    from splitwatch.stats import duration
    from splitwatch.stats.capping import cap_threshold, winsorize

    values = np.r_[np.ones(99), 1000.0]
    cap = cap_threshold(values, 0.99)
    assert cap == pytest.approx(np.quantile(values, 0.99))
    capped = winsorize(values, cap)
    assert capped.max() == pytest.approx(cap) and capped[:99].tolist() == [1.0] * 99
    # capping is what keeps one whale from deciding the experiment
    assert SampleStats.from_values(capped).variance < SampleStats.from_values(values).variance / 100
    d = duration(units_needed=40_000, daily_units=3_000, coverage=0.5)
    assert d.days == 27 and d.units_per_day == 1500  # ceil(40000 / 1500)


def test_fast_distribution_functions_match_scipy_stats() -> None:
    from splitwatch.stats import _dist

    for x in (-6.0, -1.96, -0.3, 0.0, 0.7, 2.5, 8.0):
        assert _dist.norm_cdf(x) == pytest.approx(st.norm.cdf(x), rel=1e-12, abs=1e-300)
        assert _dist.norm_sf(x) == pytest.approx(st.norm.sf(x), rel=1e-12, abs=1e-300)
        assert _dist.norm_pdf(x) == pytest.approx(st.norm.pdf(x), rel=1e-12)
        for df in (1.5, 4.0, 17.776, 300.0):
            assert _dist.t_sf(x, df) == pytest.approx(st.t.sf(x, df), rel=1e-10, abs=1e-300)
    for q in (1e-6, 0.025, 0.5, 0.8, 0.975):
        assert _dist.norm_ppf(q) == pytest.approx(st.norm.ppf(q), rel=1e-12)
        assert _dist.t_ppf(q, 17.776) == pytest.approx(st.t.ppf(q, 17.776), rel=1e-10)
    for x, df in ((0.5, 1), (5.76, 1), (12.0, 3)):
        assert _dist.chi2_sf(x, df) == pytest.approx(st.chi2.sf(x, df), rel=1e-12)


@pytest.mark.parametrize(("ours", "theirs"), [("holm", "holm"), ("bh", "fdr_bh"), ("bonferroni", "bonferroni")])
def test_corrections_match_statsmodels(ours: str, theirs: str) -> None:
    rng = np.random.default_rng(5)
    for size in (2, 5, 40):
        p = np.r_[rng.uniform(0, 0.05, size // 2), rng.uniform(0, 1, size - size // 2)]
        assert adjust_p_values(p.tolist(), ours) == pytest.approx(list(multipletests(p, method=theirs)[1]),
                                                                   rel=1e-12)


def test_shifted_sums_merge_by_addition_and_keep_the_variance() -> None:
    # Sums of (value - c) merge across days with different references c, exactly: the merged mean and
    # variance equal numpy's on the concatenated values (rel 1e-9), and the unshifted raw sums of
    # values near 1e6 with sd 0.01 do not (their variance is cancellation noise).
    rng = np.random.default_rng(31)
    a, b = 1e6 + rng.normal(0, 0.01, 5000), 1e6 + rng.normal(0, 0.01, 7000)
    merged = SampleStats.from_values(a, shift=float(a[0])) + SampleStats.from_values(b, shift=float(b[-1]))
    both = np.concatenate([a, b])
    assert merged.n == both.size and merged.shift == float(a[0])
    assert merged.mean == pytest.approx(both.mean(), rel=1e-12)
    assert merged.variance == pytest.approx(both.var(ddof=1), rel=1e-6)
    raw = SampleStats.from_values(both, shift=0.0)
    assert abs(raw.variance / both.var(ddof=1) - 1) > 0.01


def test_from_values_chooses_its_own_shift_and_keeps_the_variance() -> None:
    # issue 25, 5c: with the default shift, values near 1e6 with sd 0.01 keep their variance (numpy's,
    # rel 1e-6), and 0/1 values still read as a binary metric whatever the shift chosen
    rng = np.random.default_rng(32)
    values = 1e6 + rng.normal(0, 0.01, 100_000)
    s = SampleStats.from_values(values)
    assert s.mean == pytest.approx(values.mean(), rel=1e-12)
    assert s.variance == pytest.approx(values.var(ddof=1), rel=1e-6)
    ones = SampleStats.from_values(rng.integers(0, 2, 1000))
    assert ones.shift != 0 and ones.is_binary_compatible
    assert binary_estimate(ones).mean == pytest.approx(ones.mean, rel=1e-12)
    assert not SampleStats.from_values([0.5, 1.0, 0.0]).is_binary_compatible

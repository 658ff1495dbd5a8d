"""Results by segment: the heterogeneity test against statsmodels, corrections within each scope, intervals
that agree with the adjusted p-values, the seeded A/A across 20 segments, and the config's checks.

References: statsmodels' ``combine_effects`` (Cochran's Q and its test of homogeneity) and
``multipletests`` (Holm, Benjamini-Hochberg, Bonferroni), to 1e-12.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.meta_analysis import combine_effects
from statsmodels.stats.multitest import multipletests

from splitwatch.service.config import ConfigError, parse_config
from splitwatch.service.local.segment_simulation import simulate_aa
from splitwatch.stats.errors import InvalidSpecification
from splitwatch.stats.segments import (
    adjust_within,
    agreeing_bound,
    agreeing_interval,
    breach_p_value,
    family_key,
    heterogeneity,
)


@pytest.mark.parametrize("seed", range(5))
def test_heterogeneity_is_statsmodels_cochran_q(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 21))
    effects, variances = rng.normal(0, 0.1, k), rng.uniform(0.001, 0.02, k)
    ours = heterogeneity(effects.tolist(), np.sqrt(variances).tolist())
    ref = combine_effects(effects, variances)
    stat, p = ref.test_homogeneity()[:2]
    assert ours is not None and ours.df == k - 1 == ref.df_resid
    assert math.isclose(ours.q, ref.q, rel_tol=1e-12) and math.isclose(ours.q, stat, rel_tol=1e-12)
    assert math.isclose(ours.p_value, p, rel_tol=1e-9)
    assert math.isclose(ours.pooled, ref.mean_effect_fe, rel_tol=1e-12)


def test_heterogeneity_needs_two_informative_segments() -> None:
    assert heterogeneity([0.1], [0.01]) is None
    assert heterogeneity([0.1, 0.2], [0.01, 0.0]) is None  # a zero variance carries nothing
    h = heterogeneity([0.1, 0.2, float("nan")], [0.01, 0.02, 0.01])
    assert h is not None and h.segments == 2


@pytest.mark.parametrize("method", ["holm", "bh", "bonferroni"])
def test_each_family_is_corrected_on_its_own(method: str) -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, 30).tolist()
    families = [i % 3 for i in range(30)]
    ours = adjust_within(p, families, method)
    sm = {"holm": "holm", "bh": "fdr_bh", "bonferroni": "bonferroni"}[method]
    for f in range(3):
        idx = [i for i in range(30) if families[i] == f]
        ref = multipletests([p[i] for i in idx], method=sm)[1]
        assert np.allclose([ours[i] for i in idx], ref, rtol=1e-12, atol=0)


def test_scopes_nest_families() -> None:
    keys = [("language", "resolved"), ("language", "escalated"), ("client", "resolved")]
    assert len({family_key("per_dimension", d, m) for d, m in keys}) == 3
    assert len({family_key("per_metric", d, m) for d, m in keys}) == 2
    assert len({family_key("global", d, m) for d, m in keys}) == 1
    with pytest.raises(InvalidSpecification, match="unknown correction scope"):
        family_key("everything", "language", "resolved")  # type: ignore[arg-type]


def test_intervals_exclude_zero_exactly_when_the_adjusted_p_is_below_alpha() -> None:
    rng = np.random.default_rng(11)
    alpha = 0.05
    checked = 0
    for _ in range(2000):
        est, se = rng.normal(0, 1), rng.uniform(0.1, 1)
        z = abs(est) / se
        p = 2 * (1 - 0.5 * (1 + math.erf(z / math.sqrt(2))))
        ci = (est - 1.959963984540054 * se, est + 1.959963984540054 * se)
        p_adj = min(1.0, p * rng.integers(1, 40))
        lo, hi = agreeing_interval(est, ci, p, p_adj, alpha)
        assert (lo > 0 or hi < 0) == (p_adj < alpha), (est, se, p, p_adj, lo, hi)
        assert (lo <= est <= hi and hi - lo >= (ci[1] - ci[0]) * (1 - 1e-9)) or math.isinf(hi)
        checked += p_adj < alpha
    assert checked > 100  # both sides of the rule were exercised
    assert agreeing_interval(0.3, (0.1, 0.5), 0.01, 0.01, alpha) == (0.1, 0.5)  # no correction: the CI itself
    assert agreeing_interval(0.3, (0.1, 0.5), 0.01, 1.0, alpha) == (-math.inf, math.inf)


def test_guardrail_bounds_agree_with_the_adjusted_breach_p() -> None:
    rng = np.random.default_rng(5)
    alpha = 0.05
    z = 1.6448536269514722  # one-sided 95%
    for _ in range(2000):
        harm, se, margin = rng.normal(0.05, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 0.05)
        lower = harm - z * se
        p = breach_p_value(harm, lower, margin, alpha)
        assert p is not None and (p < alpha) == (lower > margin)
        p_adj = min(1.0, p * rng.integers(1, 30))
        bound = agreeing_bound(harm, lower, margin, p, p_adj, alpha)
        assert (bound > margin) == (p_adj < alpha) and bound <= lower + 1e-12
    assert breach_p_value(0.1, 0.1, 0.0, alpha) is None  # no width, no standard error


def test_an_aa_across_20_segments_keeps_false_findings_at_alpha_in_every_scope() -> None:
    """400 seeded A/A experiments of 3,000 users per arm, 20 countries and 4 plans (docs/stats.md has the
    4,000-experiment table from bench/segment_aa.py). Each scope controls its own families at 0.05
    (Holm): the tolerance is three Monte Carlo standard errors at 0.05 and 400 experiments (0.033)."""
    rates = {(r.scope, r.method): r for r in simulate_aa(400)}
    for scope in ("per_dimension", "per_metric", "global"):
        assert rates[(scope, "holm")].family_rate <= 0.05 + 0.033, rates[(scope, "holm")]
    # the scopes nest: a wider family lets fewer findings through the whole report
    assert (rates[("global", "holm")].report_rate <= rates[("per_metric", "holm")].report_rate
            <= rates[("per_dimension", "holm")].report_rate)
    assert rates[("global", "none")].report_rate > 0.5  # without a correction, 96 tests find something


def _config(**analyzer: object) -> dict:
    return {"proxy": {"attributes": ["plan"]}, "analyzer": analyzer, "experiments": [{
        "key": "k", "model": "m", "arms": [
            {"name": "a", "weight": 1, "upstream": {"base_url": "http://x/v1", "model": "a"}},
            {"name": "b", "weight": 1, "upstream": {"base_url": "http://x/v1", "model": "b"}}]}]}


def test_segment_settings_are_checked_at_config_time() -> None:
    cfg = parse_config(_config(segments={"dimensions": ["language", "client", "plan"],
                                         "correction_scope": "global"}), environ={})
    assert cfg.analyzer.segments.dimensions == ["language", "client", "plan"]
    with pytest.raises(ConfigError, match=r"\['region'\] are not language, client or one of proxy.attributes"):
        parse_config(_config(segments={"dimensions": ["language", "region"]}), environ={})
    with pytest.raises(ConfigError, match="correction_scope"):
        parse_config(_config(segments={"correction_scope": "everything"}), environ={})
    bad = _config()
    bad["proxy"]["attributes"] = ["language"]
    with pytest.raises(ConfigError, match="segment dimensions of every request"):
        parse_config(bad, environ={})


def test_two_experiments_with_one_salt_are_refused() -> None:
    cfg = _config()
    second = {**cfg["experiments"][0], "key": "k2", "model": "m2", "salt": "k"}
    with pytest.raises(ConfigError, match="same salt"):
        parse_config({**cfg, "experiments": [cfg["experiments"][0], second]}, environ={})
    second["salt"] = "k2-own"
    assert len(parse_config({**cfg, "experiments": [cfg["experiments"][0], second]}, environ={}).experiments) == 2

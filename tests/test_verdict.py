"""The verdict and what it is built from: roles, correction families, guardrails that stay honest at
small samples and under monitoring, relative-lift inference, SRM. One test per finding of issue 11,
with the issue's input and the correct outcome; references are stated with their tolerances."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from statsmodels.stats.proportion import confint_proportions_2indep

from splitwatch.stats import (
    AnalysisOptions,
    MetricDefinition,
    QuantileStats,
    RatioStats,
    Reason,
    SampleStats,
    StateInForce,
    Verdict,
    analyze,
    compare,
    compare_proportions,
    compare_sequential,
    decide,
    one_sided_halfwidth,
    srm_checks,
    with_state,
)
from splitwatch.stats._dist import norm_ppf, t_ppf, t_sf
from splitwatch.stats.estimates import binary_estimate, mean_estimate
from splitwatch.stats.sequential import boundary

WEIGHTS = {"base": 50, "ft": 50}


def _binary(name: str, role: str = "secondary", direction: str = "increase", **kw: object) -> MetricDefinition:
    return MetricDefinition(name=name, kind="binary", direction=direction, role=role, **kw)  # type: ignore[arg-type]


def _run(metrics: list[MetricDefinition], stats: dict[str, dict], units: dict[str, int] | None = None,
         **options: object):
    units = units or {a: next(iter(s.values())).n for a, s in stats.items()}
    res = analyze(metrics, stats, "base", WEIGHTS, units, AnalysisOptions(**options))  # type: ignore[arg-type]
    return res, decide(res, metrics, units, WEIGHTS, "base", units_per_day=1000)


# -- the verdict agrees with its table ------------------------------------------------------------
def test_a_primary_win_does_not_ship_past_an_unproven_guardrail_and_diagnostics_stay_out() -> None:
    # The demo's situation: resolved better, latency_p50 (diagnostic) clearly worse, the escalated
    # guardrail's interval reaching +5.4 points against a margin of 0.01.
    metrics = [_binary("resolved", "primary"), _binary("escalated", "guardrail", "decrease", margin=0.01),
               MetricDefinition(name="latency_p50_ms", kind="quantile", quantile=0.5, direction="decrease",
                                role="diagnostic")]
    stats = {"base": {"resolved": SampleStats.binary(1000, 460), "escalated": SampleStats.binary(1000, 220),
                      "latency_p50_ms": QuantileStats(3000, 0.5, 40.0, 39.8, 40.2)},
             "ft": {"resolved": SampleStats.binary(1000, 580), "escalated": SampleStats.binary(1000, 190),
                    "latency_p50_ms": QuantileStats(3000, 0.5, 44.0, 43.8, 44.2)}}
    res, v = _run(metrics, stats, sequential=True)
    assert res.get("resolved", "ft").decision == "better"
    assert res.get("latency_p50_ms", "ft").decision == "worse"
    assert res.get("escalated", "ft").guardrail.status == "inconclusive"
    assert v.decision == "keep_running"
    assert "primary resolved better for ft" in v.sentence
    assert "Guardrail escalated not yet shown non-inferior for ft" in v.sentence
    assert "latency_p50_ms" not in v.sentence  # a diagnostic is shown, never in the verdict
    unproven = [r for r in v.reasons if r.code == "guardrail_unproven"]
    assert unproven[0].metric == "escalated" and unproven[0].data["more_units"] > 0 and unproven[0].data["days"] > 0
    # the same data with a margin the interval clears ships, and names the worse secondary
    metrics[1] = _binary("escalated", "guardrail", "decrease", margin=0.08)
    metrics.append(_binary("thumbs_down_free", "secondary"))
    for arm, k in (("base", 900), ("ft", 820)):
        stats[arm]["thumbs_down_free"] = SampleStats.binary(1000, k)
    res, v = _run(metrics, stats, sequential=True)
    assert v.decision == "ship" and v.arm == "ft"
    assert "Secondary thumbs_down_free worse for ft" in v.sentence


def test_no_primary_never_ships_and_a_worse_primary_rolls_back() -> None:
    stats = {"base": {"m": SampleStats.binary(5000, 1500)}, "ft": {"m": SampleStats.binary(5000, 1800)}}
    _, v = _run([_binary("m", "secondary")], stats)
    assert v.decision == "keep_running" and v.reasons[0].code == "no_primary"
    _, v = _run([_binary("m", "primary", "decrease")], stats)
    assert v.decision == "roll_back" and v.reasons[0].code == "primary_worse" and v.arm == "ft"


# -- correction families follow the roles ---------------------------------------------------------
def test_diagnostics_do_not_dilute_the_primary() -> None:
    rng = np.random.default_rng(3)
    metrics = [_binary("resolved", "primary")]
    stats: dict[str, dict] = {"base": {"resolved": SampleStats.binary(4000, 1200)},
                              "ft": {"resolved": SampleStats.binary(4000, 1290)}}
    for i in range(6):
        metrics.append(MetricDefinition(name=f"d{i}", kind="continuous", role="diagnostic"))
        for arm in stats:
            stats[arm][f"d{i}"] = SampleStats.from_values(rng.normal(0, 1, 4000))
    res, _ = _run(metrics, stats)
    r = res.get("resolved", "ft")
    assert r.p_value_adjusted == r.p_value  # a family of one: Holm leaves it alone
    assert all(x.p_value_adjusted == x.p_value for x in res.results if x.role == "diagnostic")


# -- guardrails: no non-inferiority from nothing ----------------------------------------------------
def test_zero_events_in_three_units_is_not_non_inferior() -> None:
    metric = [_binary("escalated", "guardrail", "decrease", margin=0.01)]
    stats = {"base": {"escalated": SampleStats.binary(3, 0)}, "ft": {"escalated": SampleStats.binary(3, 0)}}
    for options in ({}, {"min_units_per_arm": 2}):  # the interval alone is honest, not only the minimum
        res, v = _run(metric, stats, **options)
        g = res.get("escalated", "ft").guardrail
        assert g.status == "inconclusive" and g.upper > 0.4
        assert v.decision == "keep_running"


def test_relative_margin_with_zero_against_one_event_is_not_non_inferior() -> None:
    metric = [_binary("escalated", "guardrail", "decrease", margin=0.2, relative_margin=True)]
    stats = {"base": {"escalated": SampleStats.binary(20, 0)}, "ft": {"escalated": SampleStats.binary(20, 1)}}
    res, v = _run(metric, stats, min_units_per_arm=2)
    g = res.get("escalated", "ft").guardrail
    assert g.status == "inconclusive" and g.upper > 1 and g.method == "katz_log_ratio_adjusted"
    assert math.isnan(g.harm) and "control's value is 0" in v.sentence and "nan" not in v.sentence
    json.dumps(v.as_dict(), allow_nan=False)  # strict JSON: the undefined harm is null
    # reference: statsmodels' log-adjusted ratio interval (Katz, 0.5 added), 90%, to 1e-9
    lo, hi = confint_proportions_2indep(1, 20, 0, 20, method="log-adjusted", compare="ratio", alpha=0.10)
    assert (g.lower, g.upper) == pytest.approx((lo - 1, hi - 1), rel=1e-9)


def test_an_error_rate_guardrail_with_no_error_is_judged_on_its_requests() -> None:
    # error_rate is a ratio over users (errors / requests); with no error in either arm it has no
    # delta-method variance, yet 0 errors in 12,000 requests bounds the harm: Newcombe over requests.
    metric = [MetricDefinition(name="error_rate", kind="ratio", direction="decrease", role="guardrail",
                               margin=0.005)]
    zero = RatioStats(4000, 0.0, 0.0, 12000.0, 40000.0, 0.0)  # 3 requests a user (per-user sums)
    res, _ = _run(metric, {"base": {"error_rate": zero}, "ft": {"error_rate": zero}})
    r = res.get("error_rate", "ft")
    assert r.effect.p_value == 1.0 and r.guardrail.status == "non_inferior"
    ref = confint_proportions_2indep(0, 12000, 0, 12000, method="newcomb", alpha=0.10)
    assert (r.guardrail.lower, r.guardrail.upper) == pytest.approx(ref, abs=1e-12)
    few = RatioStats(150, 0.0, 0.0, 150.0, 150.0, 0.0)  # 150 requests: the bound (0.018) is above 0.005
    res, _ = _run(metric, {"base": {"error_rate": few}, "ft": {"error_rate": few}})
    assert res.get("error_rate", "ft").guardrail.status == "inconclusive"


def test_sequential_guardrail_uses_a_confidence_sequence() -> None:
    # 1000/10000 in both arms, margin 0.01: the fixed-horizon bound (0.0070) clears the margin, the
    # confidence sequence (about 0.012) does not: under monitoring it is not non-inferior yet.
    metric = [_binary("escalated", "guardrail", "decrease", margin=0.01)]
    stats = {"base": {"escalated": SampleStats.binary(10000, 1000)},
             "ft": {"escalated": SampleStats.binary(10000, 1000)}}
    fixed, _ = _run(metric, stats)
    seq, v = _run(metric, stats, sequential=True)
    assert fixed.get("escalated", "ft").guardrail.status == "non_inferior"
    g = seq.get("escalated", "ft").guardrail
    assert g.status == "inconclusive" and g.upper > 0.0115 and "msprt_one_sided" in g.method
    assert v.decision == "keep_running" and "escalated" in v.sentence


def test_guardrail_level_is_a_setting_and_is_stated() -> None:
    metric = [_binary("escalated", "guardrail", "decrease", margin=0.02)]
    stats = {"base": {"escalated": SampleStats.binary(5000, 500)}, "ft": {"escalated": SampleStats.binary(5000, 520)}}
    g05 = _run(metric, stats)[0].get("escalated", "ft").guardrail
    g01 = _run(metric, stats, guardrail_alpha=0.01)[0].get("escalated", "ft").guardrail
    assert g05.alpha == 0.05 and g01.alpha == 0.01 and g01.upper > g05.upper
    # the 90% Newcombe interval of statsmodels is the pair of one-sided 95% bounds, to 1e-10
    assert (g05.lower, g05.upper) == pytest.approx(
        confint_proportions_2indep(520, 5000, 500, 5000, method="newcomb", alpha=0.10), abs=1e-10)


def test_one_sided_confidence_sequence_matches_confseq() -> None:
    # confseq's tests (Howard et al.; values from their R reference): one-sided normal mixture
    # boundary at v = 100, alpha 0.05, v_opt 100: 27.66071; two-sided: 30.35209. Tolerance 1e-5.
    # Our scale: V = 1/v = 0.01, n = n_star (v_opt = v), half-width on the estimate = s * V.
    assert one_sided_halfwidth(0.01, 1000, 0.05, 1000) * 100 == pytest.approx(27.66071, abs=1e-5)
    assert boundary(0.01, 1000, 0.05, 1000).halfwidth * 100 == pytest.approx(30.35209, abs=1e-5)


# -- relative-lift inference -------------------------------------------------------------------------
def _gbstats_two_sided(m0: float, v0: float, n0: int, m1: float, v1: float, n1: int, alpha: float):
    """gbstats' published TwoSidedTTest (frequentist/tests.py), written out from its formulas."""
    var = v1 / (m0**2 * n1) + v0 * m1**2 / (m0**4 * n0)
    est = (m1 - m0) / m0
    dof = (v1 / n1 + v0 / n0) ** 2 / (v1**2 / (n1**2 * (n1 - 1)) + v0**2 / (n0**2 * (n0 - 1)))
    p = 2 * t_sf(abs(est / math.sqrt(var)), dof)
    w = t_ppf(1 - alpha / 2, dof) * math.sqrt(var)
    return est, (est - w, est + w), p


def test_relative_p_value_and_interval_match_gbstats() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        a, b = rng.exponential(10, int(rng.integers(5, 60))), rng.exponential(11, int(rng.integers(5, 60)))
        sa, sb = SampleStats.from_values(a), SampleStats.from_values(b)
        eff = compare(mean_estimate(sa), mean_estimate(sb), method="welch")
        est, ci, p = _gbstats_two_sided(sa.mean, sa.variance, sa.n, sb.mean, sb.variance, sb.n, 0.05)
        assert eff.relative == pytest.approx(est, rel=1e-12)
        assert eff.relative_ci == pytest.approx(ci, rel=1e-9)
        assert eff.relative_p_value == pytest.approx(p, rel=1e-9)


@pytest.mark.parametrize("mode", ["welch", "binary", "sequential"])
def test_each_interval_excludes_zero_exactly_when_its_p_value_is_below_alpha(mode: str) -> None:
    # 2,000 small-n cases per mode; before, 166 of 2,000 disagreed on the relative scale.
    rng = np.random.default_rng({"welch": 6, "binary": 7, "sequential": 8}[mode])
    for _ in range(2000):
        n0, n1 = (int(x) for x in rng.integers(5, 40, 2))
        if mode == "binary":
            c = SampleStats.binary(n0, int(rng.binomial(n0, 0.4)))
            t = SampleStats.binary(n1, int(rng.binomial(n1, 0.6)))
            if binary_estimate(c).variance + binary_estimate(t).variance == 0 or c.sum == 0:
                continue
            eff = compare_proportions(c, t)
        else:
            c, t = SampleStats.from_values(rng.exponential(10, n0)), SampleStats.from_values(rng.exponential(14, n1))
            eff = (compare(mean_estimate(c), mean_estimate(t), method="welch") if mode == "welch"
                   else compare_sequential(mean_estimate(c), mean_estimate(t), 0.05, n_star=60))
        for ci, p in ((eff.absolute_ci, eff.p_value), (eff.relative_ci, eff.relative_p_value)):
            if ci is None:  # no variance on the relative scale (no event in the treatment arm): p = 1
                assert p == 1.0
                continue
            assert (ci[0] > 0 or ci[1] < 0) == (p < 0.05), (mode, ci, p)
        assert eff.statistic == pytest.approx(eff.absolute / eff.se, rel=1e-12)


def test_the_config_chooses_the_deciding_scale() -> None:
    metric = [MetricDefinition(name="csat", kind="continuous", role="primary")]
    rng = np.random.default_rng(9)
    stats = {"base": {"csat": SampleStats.from_values(rng.exponential(10, 30))},
             "ft": {"csat": SampleStats.from_values(rng.exponential(16, 30))}}
    absolute, _ = _run(metric, stats)
    relative, _ = _run(metric, stats, decision_scale="relative")
    a, r = absolute.get("csat", "ft"), relative.get("csat", "ft")
    assert a.p_value == a.effect.p_value and r.p_value == r.effect.relative_p_value and a.p_value != r.p_value


# -- SRM ----------------------------------------------------------------------------------------------
def test_srm_chi_square_catches_what_the_sequential_test_misses_and_makes_the_verdict_invalid() -> None:
    units = {"base": 821_588, "ft": 815_482}
    chi, seq, counts = srm_checks(units, WEIGHTS)
    assert chi.p_value == pytest.approx(1.8e-6, rel=0.05) and chi.mismatch
    assert seq.p_value == pytest.approx(0.0015, rel=0.1) and not seq.mismatch and not counts.mismatch
    metric = [_binary("resolved", "primary")]
    stats = {"base": {"resolved": SampleStats.binary(units["base"], 300_000)},
             "ft": {"resolved": SampleStats.binary(units["ft"], 330_000)}}
    res, v = _run(metric, stats, units=units, sequential=True, srm_sequential=True)
    assert res.get("resolved", "ft").decision == "better"
    assert v.decision == "invalid" and "chi_square" in v.sentence and v.reasons[0].code == "srm"


@pytest.mark.parametrize("small", [0, 1])
def test_an_arm_with_fewer_than_two_units_is_a_mismatch(small: int) -> None:
    from splitwatch.service.analyzer.analysis import analyze_data
    from splitwatch.service.analyzer.kpi_queries import ExperimentData
    from splitwatch.service.config import parse_config

    cfg = parse_config({"experiments": [{"key": "e", "model": "m", "arms": [
        {"name": "base", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "a"}},
        {"name": "ft", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "b"}}],
        "metrics": [{"name": "resolved", "kind": "binary", "role": "primary"}]}]}, environ={})
    exp = cfg.experiments[0]
    units = {"base": 5000} | ({"ft": small} if small else {})
    data = ExperimentData("e", 1, None, None, units, units, list(exp.metrics), {})
    res = analyze_data(data, exp, cfg.analyzer, sequential=True)
    assert res.srm_mismatch and res.srm_tests[2].arms == ["ft"]
    v = decide(res, exp.metrics, {"base": 5000, "ft": small}, {"base": 50, "ft": 50}, "base")
    assert v.decision == "invalid" and "ft" in v.sentence
    # a phase's first units are not a mismatch: the rule waits for 10 expected units per arm
    assert not srm_checks({"base": 3, "ft": 0}, WEIGHTS)[2].mismatch


# -- planning ------------------------------------------------------------------------------------------
def test_units_to_power_matches_the_closed_form_for_a_fixed_test() -> None:
    # For a z-test the planner's N solves gap = (z_{1-a/2} + z_power) se_N: N = n (z_sum se / gap)^2.
    metric = [MetricDefinition(name="resolved", kind="binary", role="primary", mde=0.02)]
    stats = {"base": {"resolved": SampleStats.binary(2000, 600)}, "ft": {"resolved": SampleStats.binary(2000, 610)}}
    res, v = _run(metric, stats)
    r = res.get("resolved", "ft")
    expected = 4000 * ((norm_ppf(0.975) + norm_ppf(0.8)) * r.effect.se / 0.02) ** 2
    reason = next(x for x in v.reasons if x.code == "primary_inconclusive")
    assert reason.data["units_needed"] == pytest.approx(expected, rel=0.002)
    assert reason.data["more_units"] == pytest.approx(expected - 4000, rel=0.005)
    assert reason.data["days"] == pytest.approx(reason.data["more_units"] / 1000)
    assert v.units_to_power == reason.data["more_units"] and f"{v.units_to_power:,}" in v.sentence
    assert reason.data["effect_source"] == "mde"
    # the power reached so far: statsmodels' two-sided z-test power at this sample, effect 0.02 (the far
    # tail, about 1e-4 here, is the only difference: 1e-3)
    from statsmodels.stats.power import NormalIndPower

    sd = r.effect.se / math.sqrt(2 / 2000)  # a unit's sd: the difference's se is sd sqrt(2 / n) per arm
    expected_power = NormalIndPower().power(effect_size=0.02 / sd, nobs1=2000, alpha=0.05)
    assert reason.data["power_now"] == pytest.approx(expected_power, abs=1e-3)
    assert f"power so far {reason.data['power_now']:.0%}" in reason.message


# -- the state in force is part of the decision (issue 25, finding 1) ---------------------------------
FAST_PATH = {"test": "failures", "arm": "ft", "lower": 0.087, "margin": 0.05, "alpha": 0.001,
             "method": "agresti_caffo_msprt_one_sided(n_star=1000)",
             "control": {"arm": "base", "requests": 78, "failures": 0, "rate": 0.0},
             "treatment": {"arm": "ft", "requests": 77, "failures": 26, "rate": 26 / 77}}
PLAN = "About 28 more units reach 80% power on what is missing."


def _keep_running() -> Verdict:
    return Verdict("keep_running", f"Keep running: primary resolved not yet significant for ft. {PLAN}", None,
                   [Reason("primary_inconclusive", "primary resolved not yet significant for ft", "resolved", "ft",
                           {"more_units": 28, "days": 0.3, "units_needed": 190})], 28, 0.3, plan=PLAN)


def test_a_pause_by_the_guard_reads_roll_back_done_with_its_evidence_first() -> None:
    state = StateInForce("paused", "guard", "2026-12-05T20:43:10+00:00", "ft fails 26 of 77 requests",
                         evidence=FAST_PATH)
    v = with_state(_keep_running(), state)
    assert v.decision == "roll_back" and v.data_decision == "keep_running" and v.arm == "ft"
    assert v.headline == "Roll back: done by the rollout guard at 2026-12-05 20:43 UTC"
    assert v.units_to_power is None and v.days_to_power is None and "more units" not in v.sentence
    assert [r.code for r in v.reasons][:2] == ["rolled_back_by_guard", "acted_on"]
    acted = v.reasons[1].message
    assert "fast path acted, on requests: ft failed 26 of 77 requests (33.8%) against 0 of 78" in acted
    assert "+0.087" in acted and "margin 0.05" in acted and "alpha 0.001" in acted and "inconclusive" in acted
    d = v.as_dict()
    assert d["decision"] == "roll_back" and d["state"]["actor"] == "guard" and d["state"]["evidence"] == FAST_PATH
    assert "more_units" not in d["reasons"][2] and d["reasons"][2]["code"] == "primary_inconclusive"


def test_a_pause_by_a_person_says_who_and_plans_no_more_units() -> None:
    state = StateInForce("paused", "admin", "2026-12-05T21:00:00+00:00", "answers look wrong", by="alice")
    v = with_state(_keep_running(), state)
    assert v.decision == "keep_running" and v.headline == "Keep running (paused by alice since 2026-12-05 21:00 UTC)"
    assert v.sentence.startswith("Paused by alice at 2026-12-05 21:00 UTC: answers look wrong.")
    assert "primary resolved not yet significant" in v.sentence
    assert PLAN not in v.sentence and v.units_to_power is None
    assert with_state(_keep_running(), None) == _keep_running()  # running: unchanged
    running = StateInForce("running", "admin", "2026-12-05T21:00:00+00:00", "resumed", by="alice")
    assert with_state(_keep_running(), running).units_to_power == 28


def test_broken_assignment_stays_invalid_under_a_guard_pause() -> None:
    invalid = Verdict("invalid", "Invalid: sample ratio mismatch.", None, [Reason("srm", "sample ratio mismatch")])
    v = with_state(invalid, StateInForce("paused", "guard", "2026-12-05T20:43:10+00:00", "srm",
                                         evidence={"test": "srm", "method": "dirichlet", "p_value": 1e-5}))
    assert v.decision == "invalid" and v.reasons[0].code == "paused"

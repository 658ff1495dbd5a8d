"""The engine's entry point: decisions, guardrails, multiple-testing correction, SRM, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from splitwatch.stats import (
    AnalysisOptions,
    InvalidSpecification,
    MetricDefinition,
    RatioStats,
    SampleStats,
    adjust_p_values,
    analyze,
    quantile_stats,
)

METRICS = [
    MetricDefinition(name="resolved", kind="binary", direction="increase", role="primary"),
    MetricDefinition(name="escalated", kind="binary", direction="decrease", role="guardrail", margin=0.01),
    MetricDefinition(name="csat", kind="continuous", direction="increase"),
    MetricDefinition(name="resolutions_per_conversation", kind="ratio", direction="increase", role="primary"),
    MetricDefinition(name="latency_p95", kind="quantile", quantile=0.95, direction="decrease", role="guardrail",
                     margin=0.10, relative_margin=True),
]


def _arm(rng: np.random.Generator, n: int, resolved: float, escalated: float, csat: float,
         latency_scale: float) -> dict:
    conv = rng.poisson(2, n) + 1
    return {
        "resolved": SampleStats.binary(n, int(rng.binomial(n, resolved))),
        "escalated": SampleStats.binary(n, int(rng.binomial(n, escalated))),
        "csat": SampleStats.from_values(np.clip(rng.normal(csat, 1.0, n), 1, 5)),
        "resolutions_per_conversation": RatioStats.from_values(rng.binomial(conv, resolved), conv),
        "latency_p95": quantile_stats(rng.lognormal(np.log(latency_scale), 0.4, n * 2), 0.95),
    }


def test_decisions_on_a_clear_experiment() -> None:
    rng = np.random.default_rng(20)
    data = {"base": _arm(rng, 20000, 0.30, 0.10, 3.8, 1.0),
            "finetuned": _arm(rng, 20000, 0.36, 0.13, 3.8, 1.3)}
    res = analyze(METRICS, data, control="base", weights={"base": 1, "finetuned": 1},
                  units={"base": 20000, "finetuned": 20000})
    assert res.get("resolved", "finetuned").decision == "better"
    assert res.get("resolutions_per_conversation", "finetuned").decision == "better"
    esc = res.get("escalated", "finetuned")
    assert esc.guardrail is not None and esc.guardrail.status == "breached" and esc.decision == "worse"
    assert esc.guardrail.lower > 0.01 and esc.guardrail.method == "newcombe_hybrid_score"
    lat = res.get("latency_p95", "finetuned")
    assert lat.guardrail.status == "breached" and lat.effect.relative == pytest.approx(0.3, abs=0.05)
    assert res.get("csat", "finetuned").decision == "inconclusive"
    r = res.get("resolved", "finetuned")
    assert r.control.estimate == pytest.approx(0.30, abs=0.01) and r.effect.relative == pytest.approx(0.2, abs=0.05)
    assert r.method == "two_proportion_z" and res.get("csat", "finetuned").method == "welch_t"
    assert r.role == "primary" and res.get("csat", "finetuned").role == "secondary"
    assert r.bayesian.chance_to_win > 0.999
    assert res.srm is not None and not res.srm.mismatch


def test_guardrail_holds_when_harm_is_bounded_below_the_margin() -> None:
    rng = np.random.default_rng(21)
    data = {"base": _arm(rng, 50000, 0.30, 0.10, 3.8, 1.0), "ft": _arm(rng, 50000, 0.30, 0.10, 3.8, 1.0)}
    res = analyze(METRICS, data, control="base")
    assert res.get("escalated", "ft").guardrail.status == "non_inferior"
    assert res.get("latency_p95", "ft").guardrail.status == "non_inferior"


def test_correction_across_metrics_and_arms() -> None:
    rng = np.random.default_rng(22)
    data = {a: _arm(rng, 3000, 0.3, 0.1, 3.8, 1.0) for a in ("base", "b", "c")}
    metrics = [m for m in METRICS if not m.guardrail]
    holm = analyze(metrics, data, "base")
    none = analyze(metrics, data, "base", options=AnalysisOptions(correction="none"))
    assert len(holm.results) == 3 * 2
    for h, n in zip(holm.results, none.results, strict=True):
        assert h.effect.p_value == n.effect.p_value and h.p_value_adjusted >= n.p_value_adjusted
    # the families follow the roles: 2 primaries x 2 arms adjusted together, the secondary's 2 on their own
    for role, size in (("primary", 4), ("secondary", 2)):
        family = [r for r in holm.results if r.role == role]
        expected = adjust_p_values([r.p_value for r in family], "holm")
        assert len(family) == size and [r.p_value_adjusted for r in family] == pytest.approx(expected, rel=1e-12)


def test_sequential_option_and_srm() -> None:
    rng = np.random.default_rng(23)
    data = {"base": _arm(rng, 5000, 0.3, 0.1, 3.8, 1.0), "ft": _arm(rng, 5000, 0.3, 0.1, 3.8, 1.0)}
    seq = analyze(METRICS, data, "base", weights={"base": 1, "ft": 1}, units={"base": 5300, "ft": 4700},
                  options=AnalysisOptions(sequential=True, srm_sequential=True))
    fixed = analyze(METRICS, data, "base")
    for s, f in zip(seq.results, fixed.results, strict=True):
        assert s.method.startswith("msprt")
        width = s.effect.absolute_ci[1] - s.effect.absolute_ci[0]
        assert width > f.effect.absolute_ci[1] - f.effect.absolute_ci[0]  # the price of peeking
    assert seq.srm.mismatch and seq.srm.method.startswith("dirichlet")


def test_inconsistent_input_is_refused() -> None:
    rng = np.random.default_rng(24)
    good = {"base": _arm(rng, 100, 0.3, 0.1, 3.8, 1.0), "ft": _arm(rng, 100, 0.3, 0.1, 3.8, 1.0)}
    with pytest.raises(InvalidSpecification, match="control arm 'nope'"):
        analyze(METRICS, good, control="nope")
    bad = {"base": dict(good["base"]), "ft": dict(good["ft"])}
    bad["ft"]["resolutions_per_conversation"] = SampleStats.binary(100, 3)
    with pytest.raises(InvalidSpecification, match="expected RatioStats"):
        analyze(METRICS, bad, control="base")
    missing = {"base": good["base"], "ft": {k: v for k, v in good["ft"].items() if k != "csat"}}
    with pytest.raises(InvalidSpecification, match="no statistics for metric 'csat'"):
        analyze(METRICS, missing, control="base")
    with pytest.raises(ValueError, match="quantile"):
        MetricDefinition(name="p95", kind="quantile")


def test_a_degenerate_metric_is_skipped_with_its_reason() -> None:
    rng = np.random.default_rng(25)
    data = {"base": _arm(rng, 2000, 0.3, 0.1, 3.8, 1.0), "ft": _arm(rng, 2000, 0.4, 0.1, 3.8, 1.0)}
    for arm in data:
        data[arm]["constant"] = SampleStats(2000, 2000 * 60.0, 2000 * 3600.0)  # every unit: 60 tokens
    res = analyze([*METRICS, MetricDefinition(name="constant", kind="continuous")], data, "base")
    assert "constant" in res.skipped and "variance" in res.skipped["constant"]
    assert res.get("resolved", "ft").decision == "better"  # the rest is still analysed


def test_a_clustered_quantile_says_its_design_effect() -> None:
    from splitwatch.stats import QuantileStats

    metric = [MetricDefinition(name="latency_p95", kind="quantile", quantile=0.95, direction="decrease")]
    plain = {"c": QuantileStats(5000, 0.95, 100.0, 95.0, 105.0), "t": QuantileStats(5000, 0.95, 101.0, 96.0, 106.0)}
    clustered = {arm: QuantileStats(q.n, q.p, q.estimate, q.lower, q.upper, design_effect=4.0)
                 for arm, q in plain.items()}
    a = analyze(metric, {arm: {"latency_p95": q} for arm, q in plain.items()}, "c").results[0]
    b = analyze(metric, {arm: {"latency_p95": q} for arm, q in clustered.items()}, "c").results[0]
    assert a.method == "z" and b.method == "z; design_effect=4.00/4.00"
    # the variance is four times larger: the interval twice as wide
    width = (a.effect.absolute_ci[1] - a.effect.absolute_ci[0], b.effect.absolute_ci[1] - b.effect.absolute_ci[0])
    assert width[1] == pytest.approx(2 * width[0], rel=1e-12)

"""The KPI queries' counting rules, on events written through the analyzer's own lake writer.

Events are built with explicit timestamps (the proxy stamps its own, so it cannot backdate a unit's
first exposure), serialised as on Kafka, and written by ``Lake.write_batch``; the report reads them
as in production. Expected values are computed here by hand from the events.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from splitwatch.service.analyzer.lake import Lake, Record
from splitwatch.service.analyzer.report import build_report
from splitwatch.service.analyzer.report_json import to_dict
from splitwatch.service.config import parse_config
from splitwatch.service.events import ExposureEvent, OutcomeEvent, ResponseEvent

DAY = date(2026, 11, 20)
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
KEY = "kpi-windows"


class _Log:
    """Events of one experiment, written to a lake as one Kafka partition."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.n = 0

    def request(self, unit: str, arm: str, ts: datetime, forced: bool = False, tokens: int = 10) -> str:
        self.n += 1
        rid = f"r{self.n}"
        common = {"experiment": KEY, "phase": 1, "arm": arm, "unit_id": unit, "request_id": rid}
        self.events.append(ExposureEvent(ts=ts, requested_model="m", upstream_model=f"up-{arm}", forced=forced,
                                         **common).to_json())
        self.events.append(ResponseEvent(ts=ts + timedelta(milliseconds=50), status_code=200, latency_ms=50.0,
                                         completion_tokens=tokens, forced=forced, **common).to_json())
        return rid

    def outcome(self, unit: str, arm: str, metric: str, value: float, ts: datetime) -> None:
        self.events.append(OutcomeEvent(ts=ts, experiment=KEY, phase=1, arm=arm, unit_id=unit, metric=metric,
                                        value=value).to_json())

    def write(self, root: Path) -> None:
        lake = Lake(root)
        lake.write_batch(0, [Record(0, i, v) for i, v in enumerate(self.events)])


def _config(root: Path) -> object:
    return parse_config({"analyzer": {"lake_dir": str(root)}, "experiments": [{
        "key": KEY, "model": "m", "arms": [
            {"name": "base", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-base"}},
            {"name": "ft", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-ft"}}],
        "metrics": [{"name": "resolved", "kind": "binary", "role": "primary"},
                    {"name": "resolution_rate", "kind": "ratio", "numerator": "resolved",
                     "denominator": "requests"}]}]}, environ={})


def test_returning_units_belong_to_the_period_of_their_first_exposure(tmp_path: Path) -> None:
    log = _Log()
    # 14 units per arm first exposed on DAY; resolved by 4 of the control's and 7 of the treatment's
    for arm, resolved in (("base", 4), ("ft", 7)):
        for i in range(14):
            u = f"{arm}-{i}"
            log.request(u, arm, T0 + timedelta(minutes=i))
            if i < resolved:
                log.outcome(u, arm, "resolved", 1.0, T0 + timedelta(hours=1, minutes=i))
    # 10 control units first exposed 8 days earlier return on DAY, and report resolutions then
    for i in range(10):
        u = f"old-{i}"
        log.request(u, "base", T0 - timedelta(days=8))
        log.request(u, "base", T0 + timedelta(hours=2))
        log.outcome(u, "base", "resolved", 1.0, T0 + timedelta(hours=3))
    log.write(tmp_path / "lake")
    cfg = _config(tmp_path / "lake")
    rep = to_dict(build_report(cfg, KEY, DAY, DAY, progress=False))
    assert rep["units"] == {"base": 14, "ft": 14}  # not 24: the returning units are not units of DAY
    assert rep["requests"] == {"base": 14, "ft": 14}
    resolved = next(r for r in rep["results"] if r["metric"] == "resolved")
    assert resolved["control_value"] == pytest.approx(4 / 14) and resolved["treatment_value"] == pytest.approx(7 / 14)
    # the week the returning units were first exposed in holds them, their later outcomes counted as late
    week = to_dict(build_report(cfg, KEY, DAY - timedelta(days=8), DAY, progress=False))
    assert week["units"] == {"base": 24, "ft": 14} and week["excluded"]["late_outcomes"] == 10


def test_one_attribution_window_for_numerator_and_denominator(tmp_path: Path) -> None:
    # Users active longer than the 72 h window: requests at 0 h, 24 h and 120 h, each resolved. Only
    # the first two fall in the window: the rate is 2/2, not 2/3 (the denominator once counted all 3).
    log = _Log()
    for arm in ("base", "ft"):
        for i in range(6):
            u = f"{arm}-{i}"
            for hours in (0, 24, 120):
                ts = T0 + timedelta(hours=hours, minutes=i)
                log.request(u, arm, ts, tokens=hours + 1 + i)
                log.outcome(u, arm, "resolved", 1.0 if i % 2 == 0 else 0.0, ts + timedelta(minutes=5))
        log.request(f"{arm}-qa", arm, T0, forced=True)  # a QA request: its unit is not a unit
        log.outcome(f"{arm}-qa", arm, "resolved", 1.0, T0 + timedelta(minutes=1))
    log.outcome("stranger", "base", "resolved", 1.0, T0 + timedelta(minutes=2))  # never exposed
    log.outcome("base-1", "base", "resolved", 1.0, T0 - timedelta(hours=1))  # before its first exposure
    log.write(tmp_path / "lake")
    rep = to_dict(build_report(_config(tmp_path / "lake"), KEY, DAY, DAY, progress=False))
    assert rep["requests"] == {"base": 12, "ft": 12}  # 6 units x 2 requests in the window
    rate = next(r for r in rep["results"] if r["metric"] == "resolution_rate")
    assert rate["control_value"] == pytest.approx(6 / 12) and rate["treatment_value"] == pytest.approx(6 / 12)
    tokens = next(r for r in rep["results"] if r["metric"] == "completion_tokens_per_request")
    # responses in the window only: tokens 1 + i and 25 + i, mean 13 + 2.5 (all three would give 51.5)
    assert tokens["control_n"] == 6 and tokens["control_value"] == pytest.approx(15.5)
    ex = rep["excluded"]
    assert ex["late_outcomes"] == 12 and ex["early_outcomes"] == 1
    assert ex["orphan_outcomes"] == 1 and ex["forced_only_outcomes"] == 2 and ex["forced_requests"] == 2


def test_a_mean_of_a_million_with_a_spread_of_a_hundredth_keeps_its_variance() -> None:
    # 100,000 units per arm, mean 1e6, sd 0.01: raw sums of squares (1e17) lose every digit of the
    # variance; the SQL's shifted sums keep it. Reference: scipy's Welch test on the raw values,
    # p within 10% (the tolerance).
    import duckdb
    import numpy as np
    from scipy import stats as st

    from splitwatch.service.analyzer.metric_statements import metric_stats as _metric_stats
    from splitwatch.stats import MetricDefinition, analyze

    rng = np.random.default_rng(12)
    a, b = 1e6 + rng.normal(0, 0.01, 100_000), 1e6 + 0.00015 + rng.normal(0, 0.01, 100_000)
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE units (unit_id VARCHAR, arm VARCHAR)")
    con.execute("CREATE TEMP TABLE outc (unit_id VARCHAR, metric VARCHAR, value DOUBLE, attributed BOOLEAN)")
    for arm, values in (("base", a), ("ft", b)):
        ids = [f"{arm}-{i}" for i in range(values.size)]
        con.execute("INSERT INTO units SELECT * FROM (SELECT unnest(?) AS unit_id, ? AS arm)", [ids, arm])
        con.execute("INSERT INTO outc SELECT unnest(?), 'spend', unnest(?), TRUE", [ids, values.tolist()])
    metric = MetricDefinition(name="spend", kind="continuous", role="primary")
    per_arm = _metric_stats(con, metric)
    res = analyze([metric], {arm: {"spend": s} for arm, s in per_arm.items()}, "base")
    assert not res.skipped, res.skipped
    ref = st.ttest_ind(b, a, equal_var=False)
    assert res.get("spend", "ft").effect.p_value == pytest.approx(ref.pvalue, rel=0.1)
    # the difference of two means near 1e6 is known to about 1e-10 absolute: 1e-6 of this effect
    assert res.get("spend", "ft").effect.absolute == pytest.approx(b.mean() - a.mean(), rel=1e-4)


def test_capping_at_the_99th_percentile_matches_numpy(tmp_path: Path) -> None:
    # Heavy-tailed per-unit spend (Pareto, tail index 1.2: the variance is infinite). Capped at the
    # 99th percentile of all units of both arms, each arm's mean must be numpy's, to 1e-9; the report
    # says the cap and its value. A ratio metric's numerator is capped the same way.
    import numpy as np

    rng = np.random.default_rng(14)
    log, values = _Log(), {}
    for arm in ("base", "ft"):
        values[arm] = (rng.pareto(1.2, 300) + 1) * 10
        for i, v in enumerate(values[arm]):
            u = f"{arm}-{i}"
            log.request(u, arm, T0 + timedelta(seconds=i))
            log.outcome(u, arm, "spend", float(v), T0 + timedelta(seconds=i, minutes=1))
    log.write(tmp_path / "lake")
    cfg = parse_config({"analyzer": {"lake_dir": str(tmp_path / "lake")}, "experiments": [{
        "key": KEY, "model": "m", "arms": [
            {"name": "base", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-base"}},
            {"name": "ft", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-ft"}}],
        "metrics": [{"name": "spend", "kind": "continuous", "role": "primary", "cap": {"quantile": 0.99}},
                    {"name": "spend_raw_per_request", "kind": "ratio", "numerator": "spend", "denominator": "requests",
                     "cap": {"value": 50}}]}]}, environ={})
    rep = to_dict(build_report(cfg, KEY, DAY, DAY, progress=False))
    cap = np.quantile(np.concatenate([values["base"], values["ft"]]), 0.99)
    spend = next(r for r in rep["results"] if r["metric"] == "spend")
    assert spend["control_value"] == pytest.approx(np.minimum(values["base"], cap).mean(), rel=1e-9)
    assert spend["treatment_value"] == pytest.approx(np.minimum(values["ft"], cap).mean(), rel=1e-9)
    assert spend["treatment_value"] < values["ft"].mean()  # the cap changed the estimate
    vocabulary = {m["metric"]: m for m in rep["metrics"]}
    assert vocabulary["spend"]["cap_value"] == pytest.approx(cap, rel=1e-12)
    assert "capped at" in vocabulary["spend"]["definition"]
    ratio = next(r for r in rep["results"] if r["metric"] == "spend_raw_per_request")
    assert ratio["control_value"] == pytest.approx(np.minimum(values["base"], 50).mean(), rel=1e-9)
    assert vocabulary["spend_raw_per_request"]["cap_value"] == 50


def test_a_missing_price_makes_the_cost_unknown_never_zero(tmp_path: Path) -> None:
    # issue 25, finding 3: ft's model has no price. Its cost once read as 0 ("-100%, better"); it is
    # now not computed, with the model and arm named. With both priced, the cost is tokens x price.
    log = _Log()
    for arm, tokens in (("base", 100), ("ft", 300)):
        for i in range(5):  # tokens 100..140 and 300..340 (mean 120 and 320): a variance to test
            log.request(f"{arm}-{i}", arm, T0 + timedelta(minutes=i), tokens=tokens + 10 * i)
    log.write(tmp_path / "lake")

    def report(prices: dict[str, dict[str, float]]) -> dict:
        cfg = parse_config({"analyzer": {"lake_dir": str(tmp_path / "lake"), "prices": prices}, "experiments": [{
            "key": KEY, "model": "m", "arms": [
                {"name": "base", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-base"}},
                {"name": "ft", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-ft"}}]}]},
            environ={})
        return to_dict(build_report(cfg, KEY, DAY, DAY, progress=False))

    half = report({"up-base": {"prompt_per_1k": 0.05, "completion_per_1k": 0.10}})
    assert "cost_per_request" not in {r["metric"] for r in half["results"]}
    assert "up-ft (ft)" in half["skipped_metrics"]["cost_per_request"]
    assert "unknown" in half["skipped_metrics"]["cost_per_request"]
    both = report({"up-base": {"prompt_per_1k": 0.05, "completion_per_1k": 0.10},
                   "up-ft": {"prompt_per_1k": 0.05, "completion_per_1k": 0.20}})
    cost = next(r for r in both["results"] if r["metric"] == "cost_per_request")
    assert cost["control_value"] == pytest.approx(120 / 1000 * 0.10)
    assert cost["treatment_value"] == pytest.approx(320 / 1000 * 0.20)


def test_with_no_pre_period_data_cuped_leaves_each_kind_to_its_own_test(tmp_path: Path) -> None:
    # issue 25, 5b: CUPED on, but no unit has history. The binary metric's p-value is the unpooled
    # two-proportion z-test's (statsmodels, Wald) and the continuous one's is Welch's t (scipy), to 1e-9,
    # not a z-test on per-unit values (0.011009 against 0.010956 once)
    from scipy.stats import ttest_ind
    from statsmodels.stats.proportion import test_proportions_2indep

    rng = np.random.default_rng(5)
    log = _Log()
    resolved: dict[str, list[float]] = {"base": [], "ft": []}
    csat: dict[str, list[float]] = {"base": [], "ft": []}
    for arm, p, low in (("base", 0.3, 1), ("ft", 0.4, 2)):
        for i in range(300):
            u = f"{arm}-{i}"
            log.request(u, arm, T0 + timedelta(seconds=i))
            resolved[arm].append(float(rng.random() < p))
            log.outcome(u, arm, "resolved", resolved[arm][-1], T0 + timedelta(minutes=1, seconds=i))
            csat[arm].append(float(rng.integers(low, 6)))  # 1..5 and 2..5
            log.outcome(u, arm, "csat", csat[arm][-1], T0 + timedelta(minutes=2, seconds=i))
    log.write(tmp_path / "lake")
    cfg = parse_config({"analyzer": {"lake_dir": str(tmp_path / "lake"), "cuped": {"enabled": True}},
                        "experiments": [{"key": KEY, "model": "m", "arms": [
                            {"name": "base", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-base"}},
                            {"name": "ft", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-ft"}}],
                            "metrics": [{"name": "resolved", "kind": "binary", "role": "primary"},
                                        {"name": "csat", "kind": "continuous"}]}]}, environ={})
    rep = to_dict(build_report(cfg, KEY, DAY, DAY, sequential=False, progress=False))
    by = {r["metric"]: r for r in rep["results"]}
    b, f = resolved["base"], resolved["ft"]
    z = test_proportions_2indep(sum(f), len(f), sum(b), len(b), method="wald", compare="diff")
    assert by["resolved"]["p_value"] == pytest.approx(z.pvalue, rel=1e-9)
    assert by["csat"]["p_value"] == pytest.approx(ttest_ind(csat["ft"], csat["base"], equal_var=False).pvalue,
                                                  rel=1e-9)
    assert by["resolved"]["history_share"] == 0 and by["resolved"]["variance_reduction"] is None

"""CUPED end to end: history posted without an experiment -> proxy -> broker -> lake -> SQL -> report.

Simulated users whose CSAT propensity persists: a user effect u ~ N(0, 1.5) in every answer, noise
N(0, 0.75) per answer. 80% of users have one CSAT from two days before the experiment, posted as
history (no experiment); each user then chats once through the proxy and reports one CSAT. The
correlation of the pre- and post-period values is rho = 1.5^2 / (1.5^2 + 0.75^2) = 0.8, so CUPED
should remove share_with_history * rho^2 = 0.8 * 0.64 = 0.51 of the effect's variance (the
missing-covariate indicator keeps the users without history at their own value).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from splitwatch.stats import AnalysisOptions, MetricDefinition, MomentStats, analyze
from tests.harness import ingest_once, todays_report, wait_delivered

EFFECT = {"base": 0.0, "finetuned": 0.3}


def test_cuped_narrows_the_interval_by_what_theory_predicts(start_proxy) -> None:
    proxy = start_proxy()
    rng = random.Random(77)
    units, history = 1500, 0
    before = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    post: list[dict] = []
    pre: list[dict] = []
    columns: dict[str, list[tuple[float, float, float]]] = {"base": [], "finetuned": []}
    with httpx.Client(timeout=10) as c:
        bad = c.post(proxy.url + "/v1/outcomes", json={"unit_id": "x", "metric": "nope", "value": 1})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_metric"
        for i in range(units):
            unit, u = f"cuped-{i}", rng.gauss(0, 1.5)
            x = h = 0.0
            if rng.random() < 0.8:
                history += 1
                x, h = 3.7 + u + rng.gauss(0, 0.75), 1.0
                pre.append({"unit_id": unit, "metric": "csat", "value": x, "ts": before})
            r = c.post(proxy.url + "/v1/chat/completions", json={
                "model": "support-bot", "user": unit, "messages": [{"role": "user", "content": "help?"}]})
            arm = r.headers["x-splitwatch-arm"]
            y = 3.7 + EFFECT[arm] + u + rng.gauss(0, 0.75)
            post.append({"experiment": "support-ft", "unit_id": unit, "metric": "csat", "value": y})
            columns[arm].append((y, x, h))
        for batch in (pre, post):
            for i in range(0, len(batch), 500):
                assert c.post(proxy.url + "/v1/outcomes", json=batch[i:i + 500]).status_code == 202
    wait_delivered(proxy.url)
    ingest_once(proxy)
    lake = Path(proxy.config["analyzer"]["lake_dir"])
    assert list(lake.glob("date=*/experiment=_unattached/*.parquet"))  # history has its own partition
    report = todays_report(proxy)
    csat = next(r for r in report["results"] if r["metric"] == "csat")
    assert csat["history_share"] == pytest.approx(history / units, abs=1e-9)
    # theory: share * rho^2 = 0.51; the estimate from 1,500 users has a standard error near 0.03
    assert csat["variance_reduction"] == pytest.approx(history / units * 0.64, abs=0.08)
    lo, hi = csat["absolute_ci"]
    assert lo <= EFFECT["finetuned"] <= hi
    assert "CUPED" in next(m for m in report["metrics"] if m["metric"] == "csat")["definition"]
    # The pipeline's numbers are the engine's on the users' true values (to 1e-6): lake, SQL and
    # moment sums lose nothing, so the engine's seeded A/A coverage (tests/test_stats_regression.py:
    # 95% +- 1.5% over 2,000 experiments) is the pipeline's.
    metric = [MetricDefinition(name="csat", kind="continuous")]
    expected = analyze(metric, {a: {"csat": MomentStats.from_columns(np.array(v))} for a, v in columns.items()},
                       "base", options=AnalysisOptions(sequential=True)).get("csat", "finetuned")
    assert csat["absolute_effect"] == pytest.approx(expected.effect.absolute, rel=1e-6)
    assert csat["absolute_ci"] == pytest.approx(list(expected.effect.absolute_ci), rel=1e-6)
    assert csat["variance_reduction"] == pytest.approx(expected.variance_reduction, rel=1e-6)

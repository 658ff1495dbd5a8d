"""The long-term holdout end to end: two experiments on one proxy, a 10% holdout on its own salt ->
broker -> lake -> report.

Every user asks both experiments' models. The holdout's users must be exactly those the documented
rule picks (``bucket(holdout.salt, unit) < share x 10,000``), get the control of **both** experiments,
be logged as held out and left out of each experiment's own analysis. The report checks the holdout's
share (SRM) and compares it with everyone exposed: the fine-tune is planted to resolve 80% against the
control's 50%, so everyone exposed (half on each arm) resolves about 65% against the holdout's 50%.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from splitwatch.service.proxy.assignment import bucket_of
from tests.harness import base_config, experiment_config, ingest_once, todays_report, wait_delivered

SALT = "holdout-2026q4"
SHARE = 0.1
USERS = 2000
RESOLVED = {"base": 0.5, "finetuned": 0.8}


@pytest.fixture
def run(start_proxy, broker, stubs, topic, tmp_path: Path) -> dict:
    support = experiment_config(*stubs)
    tone = {**experiment_config(*stubs), "key": "tone-ft", "model": "tone-bot"}
    cfg = base_config(broker.bootstrap, topic, tmp_path, [support, tone])
    now = datetime.now(UTC)
    cfg["holdout"] = {"share": SHARE, "salt": SALT, "start": (now - timedelta(days=1)).isoformat(),
                      "end": (now + timedelta(days=60)).isoformat()}
    proxy = start_proxy(config=cfg)
    rng = random.Random(9)
    arms: dict[str, dict[str, str]] = {"support-ft": {}, "tone-ft": {}}
    outcomes = []
    with httpx.Client(timeout=10) as c:
        for i in range(USERS):
            unit = f"h-{i}"
            for model, key in (("support-bot", "support-ft"), ("tone-bot", "tone-ft")):
                r = c.post(proxy.url + "/v1/chat/completions", json={
                    "model": model, "user": unit, "messages": [{"role": "user", "content": "where is my order?"}]})
                assert r.status_code == 200, r.text
                arms[key][unit] = r.headers["x-splitwatch-arm"]
            arm = arms["support-ft"][unit]
            outcomes.append({"experiment": "support-ft", "unit_id": unit, "metric": "resolved",
                             "value": float(rng.random() < RESOLVED[arm])})
        sample = [f"h-{i}" for i in range(0, USERS, 97)]
        api = {u: c.get(f"{proxy.url}/v1/assignments/{u}").json()["assignments"] for u in sample}
        for k in range(0, len(outcomes), 500):
            assert c.post(proxy.url + "/v1/outcomes", json=outcomes[k:k + 500]).status_code == 202
    wait_delivered(proxy.url)
    ingest_once(proxy)
    reports = {key: todays_report(proxy, key) for key in ("support-ft", "tone-ft")}
    return {"arms": arms, "api": api, "reports": reports, "markdown": todays_report(proxy, fmt="md")}


def test_the_holdout_gets_its_share_and_the_control_of_every_experiment(run: dict) -> None:
    held = {f"h-{i}" for i in range(USERS) if bucket_of(SALT, f"h-{i}") < SHARE * 10_000}
    assert 150 < len(held) < 250  # 10% of 2,000, the documented rule
    for key in ("support-ft", "tone-ft"):
        assert {u for u in held if run["arms"][key][u] != "base"} == set()  # the control in both experiments
        rep = run["reports"][key]
        h = rep["holdout"]
        assert h["units"]["holdout"] == len(held)  # every held user logged as such, no one else
        assert h["units"]["exposed"] == sum(rep["units"].values()) == USERS - len(held)  # and left out of the split
        assert rep["excluded"]["holdout_units"] == len(held)
        assert h["srm"]["mismatch"] is False and h["srm"]["p_value"] > 0.001
        assert (h["share"], h["salt"]) == (SHARE, SALT)
    for unit, assignments in run["api"].items():
        for a in assignments:
            assert a["holdout"] == (unit in held)
            assert a["in_experiment"] == (unit not in held)
            if unit in held:
                assert (a["arm"], a["excluded_reason"]) == ("base", "holdout")


def test_the_report_compares_the_holdout_with_everyone_exposed(run: dict) -> None:
    rep = run["reports"]["support-ft"]
    (r,) = [x for x in rep["holdout"]["results"] if x["metric"] == "resolved"]
    assert r["holdout_value"] == pytest.approx(0.5, abs=0.1)
    assert r["exposed_value"] == pytest.approx(0.65, abs=0.05)
    assert r["decision"] == "better" and r["absolute_ci"][0] > 0
    assert "Long-term holdout: 10.0% of users (salt 'holdout-2026q4')" in run["markdown"]
    assert "## Long-term holdout" in run["markdown"]
    # the second experiment has no outcomes: nothing differs between its holdout and everyone exposed
    tone = run["reports"]["tone-ft"]["holdout"]["results"]
    assert tone and all(x["decision"] == "inconclusive" and x["exposed_value"] == 0 for x in tone)

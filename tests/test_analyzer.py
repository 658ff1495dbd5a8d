"""Analyzer and report end to end: proxy -> real broker -> lake -> SQL -> stats -> report and gauges."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import httpx
import pytest
import yaml

from splitwatch.service.analyzer.report import last_full_iso_week
from splitwatch.service.local.processes import ManagedProcess, free_port, splitwatch_command, wait_for_port
from tests.harness import read_events, unique_by_event_id, wait_delivered

TRUE = {"base": {"resolved": 0.30, "escalated": 0.10, "csat": 3.6},
        "finetuned": {"resolved": 0.45, "escalated": 0.10, "csat": 3.9}}


def _simulate(proxy, units: int, seed: int) -> dict:
    """Each unit asks once and reports resolved (binary) and csat (continuous) from the true values."""
    rng = random.Random(seed)
    sent = {"units": Counter(), "requests": Counter(), "outcomes": 0}
    outcomes = []
    with httpx.Client(timeout=10) as c:
        for i in range(units):
            unit = f"e2e-{seed}-{i}"
            r = c.post(proxy.url + "/v1/chat/completions", json={
                "model": "support-bot", "user": unit, "messages": [{"role": "user", "content": "help?"}]})
            arm = r.headers["x-splitwatch-arm"]
            sent["units"][arm] += 1
            sent["requests"][arm] += 1
            outcomes.append({"experiment": "support-ft", "unit_id": unit, "metric": "resolved",
                             "request_id": r.headers["x-splitwatch-request-id"],
                             "value": float(rng.random() < TRUE[arm]["resolved"])})
            outcomes.append({"experiment": "support-ft", "unit_id": unit, "metric": "escalated",
                             "value": float(rng.random() < TRUE[arm]["escalated"])})
            outcomes.append({"experiment": "support-ft", "unit_id": unit, "metric": "csat",
                             "value": min(5.0, max(1.0, rng.gauss(TRUE[arm]["csat"], 0.8)))})
        # an outcome for a unit that was never exposed: counted as an orphan, not merged
        outcomes.append({"experiment": "support-ft", "unit_id": "never-seen", "metric": "resolved", "value": 1})
        for i in range(0, len(outcomes), 500):
            assert c.post(proxy.url + "/v1/outcomes", json=outcomes[i:i + 500]).status_code == 202
    sent["outcomes"] = len(outcomes)
    return sent


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(splitwatch_command(*args), capture_output=True, text=True,
                          timeout=timeout)


def test_report_counts_match_what_was_sent_and_effects_contain_the_truth(start_proxy) -> None:
    proxy = start_proxy()
    sent = _simulate(proxy, 3000, seed=1)
    wait_delivered(proxy.url)
    res = _cli("analyzer", "--config", str(proxy.config_path), "--once")
    assert res.returncode == 0, res.stderr
    today = datetime.now(UTC).date().isoformat()
    rep = _cli("report", "--config", str(proxy.config_path), "--experiment", "support-ft", "--from", today,
               "--to", today, "--format", "json")
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    assert report["units"] == dict(sent["units"]) and report["requests"] == dict(sent["requests"])
    assert report["excluded"]["orphan_outcomes"] == 1 and report["excluded"]["units_in_several_arms"] == 0
    assert report["srm"]["mismatch"] is False
    by_metric = {r["metric"]: r for r in report["results"]}
    truth = {"resolved": TRUE["finetuned"]["resolved"] - TRUE["base"]["resolved"],
             "csat": TRUE["finetuned"]["csat"] - TRUE["base"]["csat"]}
    for metric, effect in truth.items():
        lo, hi = by_metric[metric]["absolute_ci"]
        assert lo <= effect <= hi, (metric, lo, hi, effect)
    assert by_metric["resolved"]["decision"] == "better"
    assert "latency_p95_ms" in by_metric and "error_rate" in by_metric  # no errors: p = 1, Newcombe interval
    assert by_metric["error_rate"]["p_value"] == 1.0 and by_metric["error_rate"]["absolute_ci"][1] > 0
    # the verdict agrees with its table (design, "Metric roles and the verdict")
    roles = {m["metric"]: m["role"] for m in report["metrics"]}
    assert roles == {"resolved": "primary", "csat": "secondary", "escalated": "guardrail",
                     "latency_p50_ms": "diagnostic", "latency_p95_ms": "diagnostic", "error_rate": "diagnostic",
                     "completion_tokens_per_request": "diagnostic"}
    guards = [r["guardrail"]["status"] for r in report["results"] if r["role"] == "guardrail"]
    primary = [r["decision"] for r in report["results"] if r["role"] == "primary"]
    expected = ("roll_back" if "breached" in guards or "worse" in primary else
                "ship" if "better" in primary and guards and all(g == "non_inferior" for g in guards) else
                "keep_running")
    assert report["verdict"]["decision"] == expected, report["verdict"]
    assert report["verdict"]["sentence"] and all("code" in r for r in report["verdict"]["reasons"])
    assert set(report["srm"]) >= {"chi_square", "sequential", "arm_counts", "mismatch"}
    defs = {m["metric"]: m["definition"] for m in report["metrics"]}
    assert defs["resolved"].startswith("per user: resolved reported as 1 at least once within 72 h")
    assert defs["error_rate"].startswith("per request:")
    # the other formats of the same report
    html = _cli("report", "--config", str(proxy.config_path), "--experiment", "support-ft", "--from", today,
                "--to", today, "--format", "html").stdout
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html and "http" not in html.split(
        "<body>")[1]  # self-contained: nothing to fetch
    md = _cli("report", "--config", str(proxy.config_path), "--experiment", "support-ft", "--from", today,
              "--to", today).stdout
    headline = report["verdict"]["headline"]  # the decision in words (a running experiment: nothing more)
    assert headline.lower() == expected.replace("_", " ")
    assert md.splitlines()[0].endswith(headline) and f"**Verdict: {headline}.**" in md
    assert "| resolved | finetuned |" in md
    for section in ("## Primary metrics", "## Secondary metrics", "## Guardrails", "## Diagnostics",
                    "## Metric definitions"):
        assert section in md


def test_killed_analyzer_leaves_every_event_in_the_lake_exactly_once(start_proxy, broker, topic) -> None:
    proxy = start_proxy()
    _simulate(proxy, 1200, seed=2)
    wait_delivered(proxy.url)
    cfg = yaml.safe_load(proxy.config_path.read_text())
    cfg["analyzer"].update({"batch_max_events": 150, "batch_max_seconds": 0.2})
    cfg_path = proxy.config_path.with_name("analyzer.yaml")
    cfg_path.write_text(yaml.safe_dump(cfg))
    lake = Path(cfg["analyzer"]["lake_dir"])
    analyzer = ManagedProcess(splitwatch_command("analyzer", "--config", str(cfg_path)),
                              cfg_path.with_suffix(".log"))
    analyzer.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((lake / "_commits").glob("*.json"))) < 3:
        time.sleep(0.05)
    assert analyzer.stop(signal.SIGKILL) == -signal.SIGKILL  # killed while batches are being written
    committed_before = len(list((lake / "_commits").glob("*.json")))
    assert committed_before >= 3
    res = _cli("analyzer", "--config", str(cfg_path), "--once")
    assert res.returncode == 0, res.stderr
    in_topic = unique_by_event_id(read_events(broker.bootstrap, topic, idle=2.0))
    con = duckdb.connect()
    rows = con.execute(f"SELECT event_id, kafka_partition, kafka_offset FROM read_parquet('{lake}/date=*/*/*.parquet')"
                       ).fetchall()
    assert len(rows) == len({(p, o) for _, p, o in rows}), "an offset is in the lake twice"
    assert len(rows) == len({e for e, _, _ in rows}) == len(in_topic), "every event exactly once"
    assert {e for e, _, _ in rows} == set(in_topic)


def _units_seen(metrics_text: str) -> float:
    """Return the sum of the live analyzer's splitwatch_units gauges over the arms of support-ft."""
    units = re.findall(r'^splitwatch_units\{arm="\w+",experiment="support-ft"\} ([0-9.]+)', metrics_text, re.M)
    return sum(float(v) for v in units)


def test_live_analyzer_exports_the_design_gauges(start_proxy) -> None:
    proxy = start_proxy()
    _simulate(proxy, 600, seed=3)
    wait_delivered(proxy.url)
    port = free_port()
    analyzer = ManagedProcess(splitwatch_command("analyzer", "--config", str(proxy.config_path),
                               "--port", str(port)), proxy.config_path.with_name("live-analyzer.log"))
    analyzer.start()
    try:
        wait_for_port(port, proc=analyzer.proc)
        # the live analysis runs every interval_s while the ingest catches up, so its first pass can
        # cover only part of the topic: wait for the pass that has seen every unit
        text = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not ("splitwatch_p_value{" in text and _units_seen(text) == 600):
            time.sleep(0.5)
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        for name in ("splitwatch_units", "splitwatch_metric_mean", "splitwatch_effect_relative", "splitwatch_p_value",
                     "splitwatch_srm_p_value", "splitwatch_guardrail_breached",
                     "splitwatch_analyzer_events_ingested_total"):
            assert re.search(rf"^{name}\{{?", text, re.M), name
        assert _units_seen(text) == 600
        assert 'method="msprt_normal_mixture"' in text  # the live view uses always-valid tests
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        analyzer.stop()


def test_report_arguments() -> None:
    assert last_full_iso_week(date(2026, 11, 27)) == (date(2026, 11, 16), date(2026, 11, 22))  # a Friday
    assert last_full_iso_week(date(2026, 11, 23)) == (date(2026, 11, 16), date(2026, 11, 22))  # a Monday
    cfg = Path(__file__).parent / "_report_cfg.yaml"
    cfg.write_text(yaml.safe_dump({"experiments": []}))
    try:
        bad = _cli("report", "--config", str(cfg), "--experiment", "x", "--from", "2026-13-01")
        assert bad.returncode == 2 and "--from" in bad.stderr and "Traceback" not in bad.stderr
        missing = _cli("report", "--config", str(cfg), "--experiment", "nope")
        assert missing.returncode == 2 and "no experiment 'nope'" in missing.stderr
    finally:
        cfg.unlink()


def test_lake_recovery_deletes_uncommitted_files(tmp_path: Path) -> None:
    from splitwatch.service.analyzer.lake import Lake, Record
    from splitwatch.service.events import OutcomeEvent

    lake = Lake(tmp_path)
    evs = [OutcomeEvent(experiment="x", phase=1, arm="a", unit_id=f"u{i}", metric="m", value=1.0) for i in range(5)]
    lake.write_batch(0, [Record(0, 10 + i, e.to_json()) for i, e in enumerate(evs)])
    # a crash after a file of the next batch was written, before its marker
    orphan = next(tmp_path.glob("date=*/experiment=x")) / "p0-00000000000000000015-00000000000000000020.parquet"
    orphan.write_bytes(b"partial")
    bad = lake.write_batch(1, [Record(1, 0, b"not json"), Record(1, 1, evs[0].to_json())])
    assert bad == (1, 1)
    kept = list((tmp_path / "_invalid").iterdir())
    assert len(kept) == 1 and b"not json" in kept[0].read_bytes()  # the invalid message is kept, not dropped
    assert Lake(tmp_path).recover() == {0: 15, 1: 2}
    assert not orphan.exists()


def test_gauges_of_a_metric_that_became_untestable_are_removed() -> None:
    from prometheus_client import generate_latest

    from splitwatch.service import metrics
    from splitwatch.service.analyzer.analysis import export_gauges
    from splitwatch.service.analyzer.kpi_queries import ExperimentData
    from splitwatch.stats import MetricDefinition, QuantileStats, SampleStats, analyze

    m = [MetricDefinition(name="resolved", kind="binary"), MetricDefinition(name="csat", kind="continuous")]
    good = {"base": {"resolved": SampleStats.binary(500, 150), "csat": SampleStats.from_values([3, 4, 5] * 50)},
            "ft": {"resolved": SampleStats.binary(500, 190), "csat": SampleStats.from_values([3, 4, 4] * 50)}}
    data = ExperimentData("gauge-exp", 1, None, None, {"base": 500, "ft": 500}, {"base": 500, "ft": 500}, m, good)
    export_gauges(data, analyze(m, good, "base"))
    text = generate_latest(metrics.ANALYZER_REGISTRY).decode()
    series = 'splitwatch_p_value{arm="ft",experiment="gauge-exp",method="welch_t",metric="csat"}'
    assert series in text
    flat = {a: {**v, "csat": SampleStats(150, 600.0, 2400.0)} for a, v in good.items()}  # every value 4: untestable
    export_gauges(data, analyze(m, flat, "base"))
    text = generate_latest(metrics.ANALYZER_REGISTRY).decode()
    assert series not in text and 'metric="csat"' not in text
    assert 'experiment="gauge-exp",metric="resolved"' in text
    # a clustered quantile's method names its design effect; the gauge's method label stays "z"
    q = [MetricDefinition(name="latency_p95_ms", kind="quantile", quantile=0.95, direction="decrease")]
    lat = {"base": {"latency_p95_ms": QuantileStats(5000, 0.95, 900.0, 880.0, 925.0, design_effect=3.1)},
           "ft": {"latency_p95_ms": QuantileStats(5000, 0.95, 950.0, 925.0, 980.0, design_effect=2.7)}}
    result = analyze(q, lat, "base")
    assert result.results[0].method == "z; design_effect=3.10/2.70"
    export_gauges(ExperimentData("gauge-q", 1, None, None, {"base": 500, "ft": 500}, {"base": 500, "ft": 500}, q,
                                 lat), result)
    text = generate_latest(metrics.ANALYZER_REGISTRY).decode()
    assert 'splitwatch_p_value{arm="ft",experiment="gauge-q",method="z",metric="latency_p95_ms"}' in text


def test_latency_quantile_sql_matches_the_clustered_reference() -> None:
    import numpy as np

    from splitwatch.service.analyzer.metric_statements import latency_quantile_stats
    from splitwatch.stats.quantile import clustered_quantile_stats

    rng = np.random.default_rng(3)
    per_unit = 1 + rng.poisson(5, 400)
    unit_of = np.repeat(np.arange(400), per_unit)
    latency = np.exp(6 + rng.normal(0, 0.5, 400)[unit_of] + rng.normal(0, 0.3, unit_of.size))
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE resp (unit_id VARCHAR, arm VARCHAR, status_code INTEGER, latency_ms DOUBLE)")
    con.executemany("INSERT INTO resp VALUES (?, 'base', 200, ?)",
                    [(f"u{u}", float(v)) for u, v in zip(unit_of, latency, strict=True)])
    con.execute("INSERT INTO resp VALUES ('u0', 'base', 503, 1e9), ('u1', 'base', 200, NULL)")  # not counted
    for p in (0.5, 0.95):
        sql = latency_quantile_stats(con, p)["base"]
        ref = clustered_quantile_stats(latency, unit_of, p)
        assert sql.n == ref.n == unit_of.size
        assert (sql.estimate, sql.lower, sql.upper) == pytest.approx((ref.estimate, ref.lower, ref.upper), rel=1e-9)
        assert sql.design_effect == pytest.approx(ref.design_effect, rel=1e-9) and sql.design_effect > 2

"""Alert rules pass promtool, and every dashboard query returns data from a real Prometheus scrape."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from splitwatch.service.local.processes import ManagedProcess, free_port, splitwatch_command, wait_for_port
from tests.harness import DASHBOARDS, experiment_config, start_prometheus


def test_alert_rules_pass_promtool() -> None:
    check = subprocess.run(["promtool", "check", "rules", "alerts.yaml"], cwd=DASHBOARDS, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=DASHBOARDS, capture_output=True,
                          text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load((DASHBOARDS / "alerts.yaml").read_text())["groups"] for r in g["rules"]]


def _alerts() -> list[dict]:
    return [r for r in _rules() if "alert" in r]


def test_the_serving_rules_record_the_dashboards_expressions() -> None:
    # issue 31: one definition of each serving measure per arm (service/serving/promql.py) for the Serving
    # dashboard, the report's Serving section and the recorded series the alerts compare
    from splitwatch.service.serving.promql import BY_KEY

    recorded = {r["record"]: r["expr"] for r in _rules() if "record" in r}
    for key in ("kv_cache_usage", "kv_cache_per_running_request", "queue_time_seconds"):
        assert recorded[f"splitwatch:serving_{key}:by_arm"] == BY_KEY[key].expr("", "5m"), key
    serving = json.loads((DASHBOARDS / "splitwatch-serving.json").read_text())
    exprs = [t["expr"] for p in serving["panels"] for t in p["targets"]]
    for series in BY_KEY.values():
        assert series.expr('experiment=~"$experiment"') in exprs, series.key


def test_every_alert_links_its_runbook_section_and_keeps_the_pod() -> None:
    # issue 25, finding 14: a runbook_url on every alert, to a section that exists; connection alerts by
    # instance, so that the alert names the pod
    runbook = (DASHBOARDS.parent / "docs" / "runbook.md").read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    for rule in _alerts():
        url = rule["annotations"].get("runbook_url", "")
        assert url == f"docs/runbook.md#{rule['alert'].lower()}" and rule["alert"].lower() in anchors, rule["alert"]
    by_name = {r["alert"]: r for r in _alerts()}
    for name in ("SplitwatchKafkaUnreachable", "SplitwatchControlTopicUnreachable"):
        rule = by_name[name]
        assert "by (instance)" in rule["expr"] and "$labels.instance" in rule["annotations"]["summary"]
    assert {"SplitwatchAnalyzerDown", "SplitwatchDriftDetectorDown", "SplitwatchArmLatencyHigh"} <= by_name.keys()


def test_the_dashboards_never_show_health_they_have_no_data_for() -> None:
    # issue 25, findings 13 and 15
    kpis = json.loads((DASHBOARDS / "splitwatch-kpis.json").read_text())
    guard = next(p for p in kpis["panels"] if p["title"] == "Guardrails")
    assert "vector(0)" not in guard["targets"][0]["expr"]  # no series is not "holding"
    assert guard["fieldConfig"]["defaults"]["noValue"] == "no guardrail tested"
    variables = {v["name"]: v for v in kpis["templating"]["list"]}
    for name in ("experiment", "metric", "arm"):  # the band joins one upper to one lower bound
        assert not variables[name].get("multi") and not variables[name].get("includeAll"), name
    band = next(p for p in kpis["panels"] if p["title"].startswith("Relative effect of $arm"))
    assert "repeat" not in band
    proxy = json.loads((DASHBOARDS / "splitwatch-proxy.json").read_text())
    errors = next(p for p in proxy["panels"] if p["title"].startswith("Error rate by arm"))
    alert = next(r for r in _alerts() if r["alert"] == "SplitwatchArmErrorRateHigh")
    assert 'status=~"5.."' in errors["targets"][0]["expr"] and 'status=~"5.."' in alert["expr"]
    assert "499" not in errors["targets"][0]["expr"]  # the alert's definition; 499s drawn apart


def test_the_committed_dashboards_are_what_the_builder_generates() -> None:
    """dashboards/*.json are built by dashboards/build.py (grafana-foundation-sdk); edits go there."""
    res = subprocess.run([sys.executable, str(DASHBOARDS / "build.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _differences(original: object, round_trip: object, where: str = "") -> list[str]:
    """Return the paths where a JSON value and its round trip through the SDK's models differ."""
    if isinstance(original, dict) and isinstance(round_trip, dict):
        out = [f"{where}.{k}: not in Grafana's schema" for k in original.keys() - round_trip.keys()]
        out += [f"{where}.{k}: required, missing" for k in round_trip.keys() - original.keys()]
        for k in original.keys() & round_trip.keys():
            out += _differences(original[k], round_trip[k], f"{where}.{k}")
        return out
    if isinstance(original, list) and isinstance(round_trip, list) and len(original) == len(round_trip):
        return [d for i, (a, b) in enumerate(zip(original, round_trip, strict=True))
                for d in _differences(a, b, f"{where}[{i}]")]
    return [] if original == round_trip else [f"{where}: {original!r} became {round_trip!r}"]


def test_every_dashboard_conforms_to_grafanas_schema() -> None:
    """Each dashboard parses into the SDK's models of Grafana's schema (dashboard, panels' options and field
    config per plugin, Prometheus queries) and comes back unchanged: no unknown key, no required one missing
    (the tooltip and legend options every time-series panel needs included)."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    for path in sorted(DASHBOARDS.glob("splitwatch-*.json")):
        original = json.loads(path.read_text())
        round_trip = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
        assert _differences(original, round_trip) == [], path.name
        for panel in original["panels"]:
            if panel["type"] == "timeseries":
                assert {"legend", "tooltip"} <= panel["options"].keys(), (path.name, panel["title"])
            assert panel["targets"] and all(t["expr"] and t["datasource"]["type"] == "prometheus"
                                            for t in panel["targets"]), (path.name, panel["title"])


def _rule_count() -> int:
    """Return the number of rules in alerts.yaml (every one must load into Prometheus)."""
    return sum(len(g["rules"]) for g in yaml.safe_load((DASHBOARDS / "alerts.yaml").read_text())["groups"])


def _panel_queries(name: str = "splitwatch-proxy.json") -> list[tuple[str, str]]:
    dash = json.loads((DASHBOARDS / name).read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def _query(prom_url: str, expr: str) -> list[dict]:
    expr = (expr.replace('arm="$arm"', 'arm=~".*"').replace("$experiment", ".*").replace("$metric", ".*")
            .replace("$dimension", ".*").replace("$segment", ".*").replace("$__rate_interval", "1m"))
    r = httpx.get(prom_url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def test_dashboard_queries_return_data_from_a_real_scrape(start_proxy, stubs, tmp_path: Path) -> None:
    # shadowing on, so that the shadow panels have data too
    proxy = start_proxy(experiment_config(*stubs, shadow={"arm": "finetuned", "share": 1.0}))
    prom, prom_url = start_prometheus(tmp_path, [proxy.url.removeprefix("http://")])
    try:
        chat = proxy.url + "/v1/chat/completions"
        body = {"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + 8
        i = 0
        with httpx.Client(timeout=10) as c:
            while time.monotonic() < deadline:  # traffic over several scrapes, so that rate() has points
                c.post(chat, json={**body, "user": f"dash-{i}"})
                c.post(chat, json={**body, "user": f"dash-{i}", "stream": True,
                                   "stream_options": {"include_usage": True}})
                c.post(chat, json={**body, "user": f"dash-{i}", "metadata": {"stub_status": "502"}})
                c.post(chat, json=body)  # no unit
                c.post(proxy.url + "/v1/outcomes", json={"experiment": "support-ft", "unit_id": f"dash-{i}",
                                                         "metric": "resolved", "value": 1})
                i += 1
                time.sleep(0.05)
        time.sleep(2.5)
        empty = []
        for title, expr in _panel_queries():
            result = _query(prom_url, expr)
            values = [float(s["value"][1]) for s in result]
            if not result or ("or vector(0)" not in expr and all(math.isnan(v) for v in values)):
                empty.append(title)
        assert not empty, f"panels without data: {empty}\n{prom.log()}"
        # the split by arm is visible in the dashboard's data
        arms = {s["metric"].get("arm") for s in _query(prom_url, _panel_queries()[0][1])}
        assert {"base", "finetuned", "unassigned"} <= arms
        # the alert rules load and evaluate against the real series
        rules = [r for g in httpx.get(prom_url + "/api/v1/rules").json()["data"]["groups"] for r in g["rules"]]
        assert len(rules) == _rule_count() and all(r["health"] == "ok" for r in rules), rules
    finally:
        prom.stop()


def test_kpi_dashboard_queries_return_data_from_a_live_analyzer(start_proxy, tmp_path: Path) -> None:

    from tests.harness import wait_delivered
    from tests.test_analyzer import _simulate

    proxy = start_proxy()
    _simulate(proxy, 800, seed=7)
    wait_delivered(proxy.url)
    port = free_port()
    analyzer = ManagedProcess(splitwatch_command("analyzer", "--config", str(proxy.config_path),
                               "--port", str(port)), tmp_path / "analyzer.log")
    analyzer.start()
    prom = None
    try:
        wait_for_port(port, proc=analyzer.proc)
        prom, prom_url = start_prometheus(tmp_path, [f"127.0.0.1:{port}"])
        empty: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            empty = []
            for title, expr in _panel_queries("splitwatch-kpis.json"):
                result = _query(prom_url, expr)
                values = [float(s["value"][1]) for s in result]
                if not result or ("or vector(0)" not in expr and all(math.isnan(v) for v in values)):
                    empty.append(title)
            if not empty:
                break
            time.sleep(1)
        assert not empty, f"panels without data: {empty}\n{analyzer.log()[-2000:]}"
        rules = [r for g in httpx.get(prom_url + "/api/v1/rules").json()["data"]["groups"] for r in g["rules"]]
        assert len(rules) == _rule_count() and all(r["health"] == "ok" for r in rules)
    finally:
        if prom is not None:
            prom.stop()
        analyzer.stop()


def test_drift_dashboard_queries_return_data_from_a_live_drift_detector(start_proxy, tmp_path: Path) -> None:

    from tests.test_analyzer import _simulate

    proxy = start_proxy()
    port = free_port()
    cfg = proxy.config
    cfg["drift"] = {"state_dir": str(tmp_path / "drift"), "reference_size": 50, "window_size": 50,
                    "window_step": 25, "output_reference_size": 50, "output_window_size": 50,
                    "output_window_step": 25, "port": port}
    proxy.write_config(cfg)
    detector = ManagedProcess(splitwatch_command("drift", "--config", str(proxy.config_path)),
                              tmp_path / "drift.log")
    detector.start()
    prom = None
    try:
        wait_for_port(port, proc=detector.proc)
        _simulate(proxy, 200, seed=8)
        prom, prom_url = start_prometheus(tmp_path, [f"127.0.0.1:{port}"])
        empty: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            empty = [title for title, expr in _panel_queries("splitwatch-drift.json")
                     if not any(not math.isnan(float(s["value"][1])) for s in _query(prom_url, expr))]
            if not empty:
                break
            time.sleep(1)
        assert not empty, f"panels without data: {empty}\n{detector.log()[-2000:]}"
    finally:
        if prom is not None:
            prom.stop()
        detector.stop()

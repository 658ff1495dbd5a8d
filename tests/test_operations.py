"""Admin API, SIGHUP reload, several workers, and the /metrics exposition (checked by promtool)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time

import httpx

from splitwatch.service.proxy.assignment import bucket_of
from tests.harness import experiment_config

CHAT = {"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]}
TOKEN = "s3cret-admin-token"


def _ask(proxy, unit: str, **extra) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions", json={**CHAT, "user": unit, **extra}, timeout=10)


def _wait_until(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_admin_requires_a_token(start_proxy) -> None:
    off = start_proxy()
    r = httpx.get(off.url + "/admin/experiments")
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
    on = start_proxy(env={"SPLITWATCH_ADMIN_TOKEN": TOKEN})
    assert httpx.get(on.url + "/admin/experiments").status_code == 401
    assert httpx.get(on.url + "/admin/experiments", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(on.url + "/admin/experiments", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    exp = ok.json()["experiments"][0]
    assert (exp["key"], exp["status"], exp["coverage"]) == ("support-ft", "running", 1.0)
    assert exp["arms"][0]["buckets"] == [0, 5000]


def test_pause_resume_and_coverage_across_workers(start_proxy) -> None:
    proxy = start_proxy(workers=2, env={"SPLITWATCH_ADMIN_TOKEN": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ft_units = [u for u in (f"adm-{i}" for i in range(200)) if bucket_of("support-ft", u) >= 5000][:20]
    assert all(_ask(proxy, u).headers["x-splitwatch-arm"] == "finetuned" for u in ft_units)

    r = httpx.put(proxy.url + "/admin/experiments/support-ft", json={"status": "paused"}, headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "paused"
    # Every worker (each request may hit either) picks the pause up within the poll interval.
    assert _wait_until(lambda: all(_ask(proxy, u).headers["x-splitwatch-arm"] == "base" for u in ft_units))
    assert _ask(proxy, ft_units[0]).headers["x-splitwatch-excluded"] == "paused"

    r = httpx.put(proxy.url + "/admin/experiments/support-ft", json={"status": "running", "coverage": 0.0},
                  headers=auth)
    assert r.json()["coverage"] == 0.0 and r.json()["status"] == "running"
    assert _wait_until(lambda: _ask(proxy, ft_units[0]).headers.get("x-splitwatch-excluded") == "not_covered")

    bad = httpx.put(proxy.url + "/admin/experiments/support-ft", json={"coverage": 3}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "coverage"
    assert httpx.put(proxy.url + "/admin/experiments/nope", json={"status": "paused"},
                     headers=auth).status_code == 404

    # Overrides survive a restart (an on-call pause must not be undone by a redeploy).
    proxy.stop()
    proxy.start()
    assert _ask(proxy, ft_units[0]).headers.get("x-splitwatch-excluded") == "not_covered"
    httpx.put(proxy.url + "/admin/experiments/support-ft", json={"coverage": 1.0}, headers=auth)
    assert _wait_until(lambda: _ask(proxy, ft_units[0]).headers["x-splitwatch-arm"] == "finetuned")


def test_sighup_reload_keeps_in_flight_requests_and_refuses_bad_config(start_proxy, stubs) -> None:
    proxy = start_proxy()
    unit = next(u for u in (f"hup-{i}" for i in range(100)) if bucket_of("support-ft", u) < 5000)
    assert _ask(proxy, unit).headers["x-splitwatch-arm"] == "base"

    # A slow request is in flight while the config changes.
    slow: dict[str, httpx.Response] = {}
    t = threading.Thread(target=lambda: slow.setdefault(
        "r", _ask(proxy, unit, metadata={"stub_latency_ms": "1500"})))
    t.start()
    time.sleep(0.3)
    cfg = dict(proxy.config)
    cfg["experiments"] = [experiment_config(*stubs, status="paused", model="support-bot")]
    cfg["experiments"][0]["arms"].reverse()  # finetuned becomes the control arm
    proxy.write_config(cfg)
    proxy.send_signal(signal.SIGHUP)
    assert _wait_until(lambda: _ask(proxy, unit).headers["x-splitwatch-arm"] == "finetuned")
    t.join(10)
    assert slow["r"].status_code == 200 and slow["r"].headers["x-splitwatch-arm"] == "base"

    # An invalid file is refused; the config in force stays.
    proxy.config_path.write_text("experiments: [{key: broken}]\n")
    proxy.send_signal(signal.SIGHUP)
    assert _wait_until(lambda: "config reload refused" in proxy.log())
    assert "experiments.0.model" in proxy.log()
    r = _ask(proxy, unit)
    assert r.status_code == 200 and r.headers["x-splitwatch-arm"] == "finetuned"
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'splitwatch_config_reloads_total{result="refused"} 1.0' in metrics
    assert 'splitwatch_config_reloads_total{result="applied"} 1.0' in metrics


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


def test_workers_share_the_load_and_metrics_aggregate(start_proxy) -> None:
    proxy = start_proxy(workers=2)
    # A keep-alive client stays on the worker that accepted its connection: find one client per worker.
    by_worker: dict[int, httpx.Client] = {}
    spare = []
    for _ in range(100):
        c = httpx.Client(timeout=10)
        w = c.get(proxy.url + "/readyz").json()["worker"]
        if w in by_worker:
            spare.append(c)
        else:
            by_worker[w] = c
        if len(by_worker) == 2:
            break
    assert sorted(by_worker) == [0, 1], "both workers accept connections"
    sent = {0: [f"w0-{i}" for i in range(30)], 1: [f"w1-{i}" for i in range(50)]}
    for w, units in sent.items():
        for u in units:
            r = by_worker[w].post(proxy.url + "/v1/chat/completions", json={**CHAT, "user": u})
            assert r.status_code == 200
        assert by_worker[w].get(proxy.url + "/readyz").json()["worker"] == w  # still the same worker
    for c in [*by_worker.values(), *spare]:
        c.close()
    units = sent[0] + sent[1]
    text = httpx.get(proxy.url + "/metrics").text
    base = sum(bucket_of("support-ft", u) < 5000 for u in units)
    got_base = _metric(text, "splitwatch_requests_total", '{arm="base",experiment="support-ft",status="200"}')
    got_ft = _metric(text, "splitwatch_requests_total", '{arm="finetuned",experiment="support-ft",status="200"}')
    assert (got_base, got_ft) == (base, len(units) - base)  # the sum over both workers
    assert "pid=" not in text  # aggregated, not one series per process
    for spool in ("worker-0", "worker-1"):  # one event shipper per worker, each connected
        assert _wait_until(lambda s=spool: _metric(httpx.get(proxy.url + "/metrics").text,
                                                   "splitwatch_kafka_connected", f'{{spool="{s}"}}') == 1.0)


def test_metrics_pass_promtool(start_proxy) -> None:
    proxy = start_proxy()
    for i in range(5):
        _ask(proxy, f"prom-{i}", stream=i % 2 == 0)
    httpx.post(proxy.url + "/v1/outcomes", json={"experiment": "support-ft", "unit_id": "prom-1",
                                                  "metric": "resolved", "value": 1})
    text = httpx.get(proxy.url + "/metrics").text
    for name in ["splitwatch_requests_total", "splitwatch_request_duration_seconds_bucket",
                 "splitwatch_time_to_first_token_seconds_bucket", "splitwatch_proxy_overhead_seconds_bucket",
                 "splitwatch_tokens_total", "splitwatch_outcomes_total", "splitwatch_events_spooled",
                 "splitwatch_kafka_connected"]:
        assert f"\n{name}" in text, name
    assert "unit" not in " ".join(re.findall(r"\{[^}]*\}", text))  # labels never carry unit ids
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_sighup_to_the_supervisor_reloads_every_worker(start_proxy, stubs) -> None:
    proxy = start_proxy(workers=2)
    cfg = dict(proxy.config)
    cfg["experiments"] = [experiment_config(*stubs, status="paused")]
    proxy.write_config(cfg)
    proxy.send_signal(signal.SIGHUP)

    def all_paused() -> bool:
        # fresh connections, so that both workers answer
        return all(httpx.post(proxy.url + "/v1/chat/completions", json={**CHAT, "user": f"sup-{i}"},
                              headers={"connection": "close"}).headers.get("x-splitwatch-excluded") == "paused"
                   for i in range(20))

    assert _wait_until(all_paused, timeout=10)
    assert proxy.log().count("config reloaded") == 2  # one line per worker

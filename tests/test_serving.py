"""Issue 31: the serving side per arm. Stub vLLM, TGI and DCGM metrics endpoints with known values are scraped
by a real Prometheus together with the proxy; the Serving dashboard's queries and the report's Serving
section must give back the stubs' values per arm."""

from __future__ import annotations

import json
import math
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from splitwatch.service.config import ModelSizeConfig, ServingConfig, UpstreamConfig
from splitwatch.service.serving.model_size import model_size, size_from_listing
from tests.harness import DASHBOARDS, base_config, experiment_config, ingest_once, start_prometheus, todays_report
from tests.serving_stubs import MetricsStub, dcgm_stub, tgi_stub, vllm_stub

MIB = 1024 * 1024


def _instant(prom_url: str, expr: str) -> dict[tuple[str, str], float]:
    """Return an instant query's values by (experiment, arm)."""
    expr = expr.replace("$experiment", ".*").replace("$__rate_interval", "5s")  # 1 s scrapes, as Grafana's 4x
    body = httpx.get(prom_url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    return {(s["metric"].get("experiment", ""), s["metric"].get("arm", "")): float(s["value"][1])
            for s in body["data"]["result"]}


def _wait_for_samples(prom_url: str, n: int, timeout: float = 60) -> None:
    """Wait until Prometheus holds ``n`` scrapes of every target."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(prom_url + "/api/v1/query", params={"query": "min(count_over_time(up[1m]))"}).json()
        result = body["data"]["result"]
        if result and float(result[0]["value"][1]) >= n:
            return
        assert time.monotonic() < deadline, body
        time.sleep(0.5)


@pytest.fixture
def serving_stubs() -> Any:
    """The model servers and GPUs behind the two experiments' arms, with known values."""
    stubs = {
        # support-ft's control, and billing-ft's too: one server behind two experiments' arms
        "vllm_base": vllm_stub("llama-base", kv=0.30, running=10, waiting=1, tokens_per_s=400, tpot_s=0.020,
                               queue_s=0.05),
        "vllm_ft": vllm_stub("llama-ft", kv=0.60, running=10, waiting=4, tokens_per_s=300, tpot_s=0.030,
                             queue_s=0.25),
        "tgi_ft": tgi_stub(running=8, waiting=3, tokens_per_s=200, tpot_s=0.025, queue_s=0.10),
        # GPU 0 serves the base model, 1 and 2 the fine-tune; 3 serves something else on the same node
        "dcgm": dcgm_stub({"0": (20_000, 50), "1": (30_000, 70), "2": (30_000, 90), "3": (1_000, 5)}),
    }
    yield stubs
    for s in stubs.values():
        s.stop()


def _config(broker: Any, topic: str, tmp_path: Path, stubs: Any, models: Any, prom_url: str) -> dict[str, Any]:
    s: dict[str, MetricsStub] = stubs
    dcgm = s["dcgm"].target
    exp = experiment_config(*models)
    exp["arms"][0]["upstream"]["serving"] = {
        "targets": [s["vllm_base"].target], "gpus": [{"target": dcgm, "gpu": "0"}],
        "model_size": {"parameters": 8.03e9, "dtype": "bfloat16", "bytes": 16_060_000_000}}
    exp["arms"][1]["upstream"]["serving"] = {
        "targets": [s["vllm_ft"].target], "gpus": [{"target": dcgm, "gpu": "1"}, {"target": dcgm, "gpu": "2"}],
        "model_size": {"parameters": 8.03e9, "dtype": "float16"}}
    billing = experiment_config(*models, key="billing-ft", model="billing-bot", salt="billing")
    billing["arms"][0]["upstream"]["serving"] = {"targets": [s["vllm_base"].target]}
    billing["arms"][1]["upstream"]["serving"] = {"targets": [s["tgi_ft"].target]}
    cfg = base_config(broker.bootstrap, topic, tmp_path, [exp, billing])
    cfg["analyzer"]["prometheus"] = {"url": prom_url, "step_s": 1, "rate_window": "5s"}
    return cfg


def test_serving_queries_and_the_report_give_back_the_servers_values_per_arm(
        start_proxy, stubs, broker, topic, serving_stubs, tmp_path: Path) -> None:
    s = serving_stubs
    proxy = start_proxy(config=_config(broker, topic, tmp_path, s, stubs, "http://127.0.0.1:1"))
    prom, url = start_prometheus(tmp_path, [proxy.url.removeprefix("http://"), *(x.target for x in s.values())])
    try:
        _wait_for_samples(url, 6)  # from here on every 5 s window holds 5 scrapes: rates are the stubs' own
        with httpx.Client(timeout=10) as c:
            for i in range(20):  # the period's units (the Serving section starts at their first exposure)
                r = c.post(proxy.url + "/v1/chat/completions",
                           json={"model": "support-bot", "user": f"serve-{i}",
                                 "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
        time.sleep(3)

        # the dashboard's queries, per arm, as Prometheus computes them from the real scrapes
        dash = json.loads((DASHBOARDS / "splitwatch-serving.json").read_text())
        panels = {p["title"]: p["targets"][0]["expr"] for p in dash["panels"]}
        got = {title: _instant(url, expr) for title, expr in panels.items()}
        assert not [t for t, v in got.items() if not v], f"panels without data: {got}\n{prom.log()}"
        sf, bf = ("support-ft", "base"), ("support-ft", "finetuned")
        bb, bc = ("billing-ft", "base"), ("billing-ft", "finetuned")
        exact = {  # gauges, and means from histograms (_sum / _count: the same extrapolation cancels)
            "GPU memory used by arm": {sf: 20_000 * MIB, bf: 60_000 * MIB},
            "GPU utilisation by arm": {sf: 0.50, bf: 0.80},
            "KV-cache usage by arm": {sf: 0.30, bf: 0.60, bb: 0.30},
            "KV-cache usage per running request by arm": {sf: 0.03, bf: 0.06, bb: 0.03},
            "Requests running by arm": {sf: 10, bf: 10, bb: 10, bc: 8},
            "Requests waiting by arm": {sf: 1, bf: 4, bb: 1, bc: 3},
            "Mean time in the queue by arm": {sf: 0.05, bf: 0.25, bb: 0.05, bc: 0.10},
            "Mean time per output token by arm": {sf: 0.020, bf: 0.030, bb: 0.020, bc: 0.025},
            "Model size by arm (parameters, as configured)": {sf: 8.03e9, bf: 8.03e9},
            "Model weights by arm (bytes, as configured)": {sf: 16_060_000_000},
        }
        for title, want in exact.items():
            assert got[title].keys() == want.keys(), (title, got[title])
            for key, value in want.items():
                assert math.isclose(got[title][key], value, rel_tol=1e-6), (title, key, got[title][key], value)
        # a counter's rate: the stub's clock and the scrape's timestamp differ by milliseconds: 10%
        tokens = got["Output tokens per second by arm"]
        for key, value in {sf: 400, bf: 300, bb: 400, bc: 200}.items():
            assert math.isclose(tokens[key], value, rel_tol=0.10), (key, tokens)

        # the alert rules load and evaluate against these series
        rules = [r for g in httpx.get(url + "/api/v1/rules").json()["data"]["groups"] for r in g["rules"]]
        assert rules and all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]

        # a peak on the fine-tune's KV cache, then back: the report's maximum is the peak, its mean below it
        s["vllm_ft"].gauge("vllm:kv_cache_usage_perc", 0.90)
        time.sleep(3)
        s["vllm_ft"].gauge("vllm:kv_cache_usage_perc", 0.60)
        time.sleep(2)
        # the report reads the same Prometheus over the period
        proxy.config["analyzer"]["prometheus"]["url"] = url
        proxy.write_config(proxy.config)
        ingest_once(proxy)
        rep = todays_report(proxy)["serving"]
        assert rep["prometheus"] == url and rep["why"] is None
        figures = {m["key"]: {a["arm"]: a for a in m["arms"]} for m in rep["measures"]}
        for key, arm, value in (("kv_cache_usage", "base", 0.30), ("gpu_memory_bytes", "base", 20_000 * MIB),
                                ("gpu_memory_bytes", "finetuned", 60_000 * MIB), ("requests_waiting", "base", 1),
                                ("requests_waiting", "finetuned", 4), ("gpu_utilisation", "finetuned", 0.80)):
            a = figures[key][arm]
            assert math.isclose(a["mean"], value, rel_tol=1e-9) and math.isclose(a["max"], value, rel_tol=1e-9), \
                (key, arm, a)
        kv = figures["kv_cache_usage"]["finetuned"]
        assert kv["max"] == pytest.approx(0.90, rel=1e-9) and 0.60 < kv["mean"] < 0.90, kv
        assert kv["ratio_to_control"] == pytest.approx(kv["mean"] / 0.30, rel=1e-9)
        assert figures["requests_waiting"]["finetuned"]["ratio_to_control"] == pytest.approx(4.0, rel=1e-9)
        for key, base, ft in (("time_per_output_token_seconds", 0.020, 0.030), ("queue_time_seconds", 0.05, 0.25)):
            assert figures[key]["base"]["mean"] == pytest.approx(base, rel=1e-6), key
            assert figures[key]["finetuned"]["mean"] == pytest.approx(ft, rel=1e-6), key
        assert figures["output_tokens_per_second"]["base"]["mean"] == pytest.approx(400, rel=0.10)
        sizes = rep["model_size"]
        assert sizes["base"] == {"model": "llama-base", "parameters": 8.03e9, "dtype": "bfloat16",
                                 "bytes": 16_060_000_000, "source": "the config", "problem": None}
        assert sizes["finetuned"]["dtype"] == "float16" and sizes["finetuned"]["bytes"] is None

        # the same figures in the Markdown, in their units
        md = todays_report(proxy, fmt="md")
        section = md[md.index("## Serving"):]
        assert re.search(r"\| KV-cache usage \| base \| 30\.0% \| 30\.0% \| +\|", section), section
        assert re.search(r"\| KV-cache usage \| finetuned \| (6[1-9]|[78]\d)\.\d% \| 90\.0% \| \d\.\d\dx \|", section)
        assert "| GPU memory used | finetuned | 58.59 GiB | 58.59 GiB | 3.00x |" in section
        assert "| Requests waiting | finetuned | 4.00 | 4.00 | 4.00x |" in section, section
        assert "| base | llama-base | 8.03 B | bfloat16 | 14.96 GiB | the config |" in section
        # the results page's summary: the candidate's ratios on the key measures, in one line
        assert re.search(r"Serving, each candidate's mean to the control's: gpu memory used 3\.00x, kv-cache usage "
                         r"2\.\d\dx, requests waiting 4\.00x, mean time per output token 1\.50x", " ".join(md.split()))
        page = todays_report(proxy, fmt="html")
        assert '<h2 id="serving">Serving</h2>' in page and "58.59 GiB" in page and "<h3>Model size</h3>" in page

        # Prometheus gone: one clear line, and the rest of the report as before
        prom.stop()
        text = todays_report(proxy, fmt="md")
        assert f"Serving: not read: Prometheus at {url} is unreachable (ConnectError" in text
        assert "## Primary metrics" in text
    finally:
        prom.stop()


def test_the_info_series_follow_a_reload(start_proxy, stubs, broker, topic, serving_stubs, tmp_path: Path) -> None:
    cfg = _config(broker, topic, tmp_path, serving_stubs, stubs, "http://127.0.0.1:1")
    proxy = start_proxy(config=cfg)
    text = httpx.get(proxy.url + "/metrics").text
    target = serving_stubs["vllm_ft"].target
    line = (f'splitwatch_upstream_info{{arm="finetuned",experiment="support-ft",model="llama-ft",role="candidate",'
            f'target="{target}",upstream="{cfg["experiments"][0]["arms"][1]["upstream"]["base_url"]}"}} 1.0')
    assert line in text, text
    assert re.search(r'splitwatch_upstream_gpu_info\{arm="finetuned",experiment="support-ft",gpu="2",role='
                     r'"candidate",target="[^"]+",upstream="[^"]+"\} 1\.0', text)
    assert re.search(r'splitwatch_upstream_model_bytes\{arm="base",dtype="bfloat16",experiment="support-ft",'
                     r'model="llama-base"\} 1\.606e\+10', text)
    # the fine-tune moves to another server: its old target goes to 0 (queries keep == 1), the new one is 1
    cfg["experiments"][0]["arms"][1]["upstream"]["serving"]["targets"] = ["vllm-ft-2:8000"]
    proxy.write_config(cfg)
    proxy.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while 'target="vllm-ft-2:8000"' not in (text := httpx.get(proxy.url + "/metrics").text):
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.1)
    assert line.replace(" 1.0", " 0.0") in text


def test_model_size_from_the_config_and_from_the_servers_listing() -> None:
    # llama.cpp's server puts n_params and size in each model's meta; other servers use flat keys
    llama_cpp = {"object": "list", "data": [{"id": "m", "object": "model",
                                             "meta": {"n_params": 8030261248, "size": 4920733696, "n_vocab": 128256}}]}
    size = size_from_listing(llama_cpp, "m")
    assert size is not None and (size.parameters, size.bytes, size.dtype) == (8030261248.0, 4920733696, None)
    assert size_from_listing(llama_cpp, "other") is None
    assert size_from_listing({"data": [{"id": "m", "object": "model", "owned_by": "vllm"}]}, "m") is None  # vLLM
    flat = size_from_listing({"data": [{"id": "m", "parameters": 7e9, "dtype": "bfloat16"}]}, "m")
    assert flat is not None and (flat.parameters, flat.dtype) == (7e9, "bfloat16")
    # the config wins field by field; an unreachable server is said, not hidden
    up = UpstreamConfig(base_url="http://127.0.0.1:1/v1", model="m", serving=ServingConfig(
        model_size=ModelSizeConfig(dtype="int4")))
    got, problem = model_size(up, timeout_s=2)
    assert got.dtype == "int4" and got.source == "the config" and problem and "127.0.0.1:1/v1/models" in problem

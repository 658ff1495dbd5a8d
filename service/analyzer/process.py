"""``splitwatch analyzer``: Kafka -> Parquet lake, and every ``interval_s`` the live analysis on /metrics."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import duckdb

from splitwatch.stats import ExperimentResult

from .. import metrics
from ..config import Config, ExperimentConfig
from ..control.channel import KafkaControl
from ..control.state import StateTable
from ..delivery.kafka_sink import KafkaSink
from ..status_server import Supervisor, start_status_server
from .analysis import analyze_data, clear_gauges, export_gauges, live_verdict
from .engines import attach_lake
from .guard import RolloutGuard
from .ingest import Ingestor
from .kpi_queries import ExperimentData, load_experiment
from .segments import SegmentAnalysis, analyze_segments
from .shadow_stats import export_shadow_gauges, shadow_summaries

log = logging.getLogger(__name__)


def _live_segments(con: Any, data: ExperimentData, exp: ExperimentConfig, cfg: Config,
                   result: ExperimentResult) -> SegmentAnalysis | None:
    """Return the live results by segment (the dashboards' segment variable), or None: none to compute, or
    they failed (logged: the experiment's own gauges matter more)."""
    if not result.results:
        return None
    try:
        return analyze_segments(con, data, exp, cfg.analyzer, result.options)
    except Exception:
        log.exception("the segments of %s failed", exp.key)
        return None


def analyze_all(cfg: Config, sequential: bool = True, guard: RolloutGuard | None = None) -> dict[str, object]:
    """Re-analyse every running experiment's current phase from the lake; export gauges; return results.

    With a ``guard`` (the live analyzer), each experiment with a ``rollout`` is then reviewed by it.
    """
    from .lake import Lake

    lake = Lake(cfg.analyzer.lake_dir)
    out: dict[str, object] = {}
    for exp in cfg.experiments:
        guarded = guard is not None and exp.rollout is not None
        if guard is not None:
            guard.export(exp)
        if not lake.has_files(exp.key):
            if guard is not None and guarded:
                guard.review(exp, None)  # a ramp starts before the first event
            continue
        t0 = time.perf_counter()
        con = duckdb.connect()
        attach_lake(con, lake)
        evidence = None
        try:
            data = load_experiment(con, lake.glob(exp.key), exp, cfg.analyzer,
                                   history_glob=lake.glob("*") if cfg.analyzer.cuped.enabled else None)
            result = analyze_data(data, exp, cfg.analyzer, sequential)
            segments = _live_segments(con, data, exp, cfg, result)
            if exp.shadow is not None:
                try:  # the phase's shadow pairs, all of them (they are in the ev table load_experiment made)
                    export_shadow_gauges(exp.key, shadow_summaries(con, alpha=cfg.analyzer.alpha))
                except Exception:
                    log.exception("the shadow statistics of %s failed", exp.key)
            if guard is not None and guarded:
                try:
                    evidence = guard.evidence(con, exp, data, result)
                except Exception:
                    log.exception("the rollout guard's analysis of %s failed; no action this time", exp.key)
                    guarded = False
        except Exception:  # one broken experiment must not stop the others' gauges
            log.exception("analysis of %s failed", exp.key)
            continue
        finally:
            con.close()
        try:
            state = guard.in_force(exp) if guard is not None else None
            verdict = live_verdict(data, exp, result, state) if result.results or result.srm_tests else None
        except Exception:  # the gauges matter more than the verdict
            log.exception("the live verdict of %s failed", exp.key)
            verdict = None
        export_gauges(data, result, verdict, segments)
        if guard is not None and guarded:
            guard.review(exp, evidence)
        metrics.ANALYSIS_SECONDS.labels(exp.key).observe(time.perf_counter() - t0)
        metrics.LAST_ANALYSIS.labels(exp.key).set(time.time())
        out[exp.key] = result
    return out


def _start_guard(cfg: Config) -> RolloutGuard | None:
    """Return the rollout guard reading the control topic (None without Kafka)."""
    if not cfg.kafka.enabled:
        return None
    control = KafkaControl(cfg.kafka, StateTable(), name="guard")
    guard = RolloutGuard(cfg, control, KafkaSink(cfg.kafka))
    control.on_apply = guard.on_apply
    control.start()
    return guard


def run_analyzer(cfg: Config, once: bool = False, host: str | None = None, port: int | None = None) -> int:
    """Run the analyzer until SIGTERM/SIGINT (or, with ``once``, ingest what is there, analyse, exit).

    The live analyzer serves /metrics, /healthz and /readyz (:mod:`..status_server`); its ingest
    loop retries an unreachable Kafka with back-off and is restarted if it fails. Several replicas
    may run in one consumer group over one lake: each writes the partitions Kafka assigns it, and
    the one that owns partition 0 (:meth:`Ingestor.leads`) runs the live analysis, exports the KPI
    gauges and runs the guard. When it dies, Kafka gives partition 0 to a survivor once the dead
    one's session times out, and the survivor takes over at its next loop (docs/analyzer.md).
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    guard = None if once else _start_guard(cfg)
    current: list[Ingestor] = []

    def on_batch(values: list[bytes]) -> None:  # the guard's fast path, on the leader only
        if guard is not None and current[0].leads():
            guard.observe(values)

    current.append(Ingestor(cfg, on_batch=on_batch))  # owns nothing until its first run: not the leader
    if once:
        stats = current[0].run(stop, until_caught_up=True)
        log.info("ingested %d events (%d invalid) in %d batches, %.1f s", stats.events, stats.invalid,
                 stats.batches, stats.seconds)
        analyze_all(cfg)
        return 0
    a = cfg.analyzer
    def ingest(supervisor: Supervisor) -> None:
        # a new Ingestor on every (re)start: nothing read by a failed run is left pending
        current[:] = [Ingestor(cfg, on_batch=on_batch)]
        current[0].run(stop, supervisor=supervisor)

    supervisor = Supervisor("analyzer-ingest", ingest, stop, metrics.ANALYZER_KAFKA_CONNECTED.labels(a.group_id),
                            metrics.ANALYZER_LOOP_RESTARTS.labels(a.group_id)).start()
    server = start_status_server(host or a.host, port if port is not None else a.port,
                                 metrics.ANALYZER_REGISTRY, [supervisor])
    log.info("analyzer: lake %s, metrics on http://%s:%d/metrics", a.lake_dir, host or a.host,
             server.server_address[1])
    next_run = 0.0
    leading = False
    while not stop.is_set():
        ingestor = current[0]
        metrics.ANALYZER_PARTITIONS.labels(a.group_id).set(len(ingestor.assigned))
        if ingestor.leads() != leading:
            leading = not leading
            metrics.ANALYZER_LEADER.labels(a.group_id).set(1 if leading else 0)
            log.info("analyzer %s the live analysis and the guard", "takes over" if leading else "hands over")
            if not leading:
                clear_gauges()  # the new leader exports them: never two replicas with the same series
            next_run = 0.0
        if leading and time.monotonic() >= next_run:
            analyze_all(cfg, guard=guard)
            next_run = time.monotonic() + a.interval_s
        stop.wait(0.5)
    supervisor.thread.join(a.batch_max_seconds + 30)
    if guard is not None:
        guard.control.stop()
    server.shutdown()
    return 0

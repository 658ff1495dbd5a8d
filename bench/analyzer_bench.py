"""Analyzer throughput: events/s from Kafka into the Parquet lake, and report time for 1M units / 10M events.

1. Ingest (target: 20,000 events/s on one core): a Tansu broker on loopback; ``--events`` realistic
   events (exposure, response, outcome JSON as the proxy writes them) are produced first, then the
   analyzer's ingester reads them into an empty lake and the rate is timed from its start to its
   last batch (the one-second quiet period it waits for at the end is not counted).
2. Report (target: under 30 s): DuckDB writes a synthetic lake in the analyzer's layout and schema,
   1,000,000 units and about 10,000,000 events over one ISO week (each unit 1-7 requests, each
   request an exposure and a response, plus resolved, escalated and csat outcomes; 60% of units
   also have a resolved and a csat outcome from the week before, posted without an experiment, so
   CUPED, on by default, adjusts resolved and csat), then ``build_report`` runs on it for the week
   (seven cumulative daily analyses for the plots).

Usage: python bench/analyzer_bench.py [--events 300000] [--units 1000000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import date
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitwatch.service.analyzer.ingest import CATCH_UP_IDLE_S, Ingestor
from splitwatch.service.analyzer.report import build_report
from splitwatch.service.analyzer.report_html import to_html
from splitwatch.service.config import parse_config
from splitwatch.service.delivery.kafka_client import ensure_topic
from splitwatch.service.events import ExposureEvent, OutcomeEvent, ResponseEvent
from splitwatch.service.local.processes import Broker

WEEK = date(2026, 11, 16)  # a Monday


def config(bootstrap: str, topic: str, lake: Path) -> dict:
    """Return the benchmark's config (the design's example experiment)."""
    return {
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic},
        "analyzer": {"lake_dir": str(lake), "batch_max_events": 50_000, "batch_max_seconds": 2},
        "experiments": [{
            "key": "support-ft", "model": "support-bot",
            "arms": [{"name": "base", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "m-base"}},
                     {"name": "finetuned", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "m-ft"}}],
            "metrics": [{"name": "resolved", "kind": "binary", "role": "primary"},
                        {"name": "escalated", "kind": "binary", "direction": "decrease", "role": "guardrail",
                         "margin": 0.01},
                        {"name": "csat", "kind": "continuous"}]}],
    }


def bench_ingest(n_events: int, work: Path) -> tuple[float, int]:
    """Return (events/s, events) of the ingester on ``n_events`` produced beforehand."""
    from kafka import KafkaProducer

    broker = Broker(work)
    broker.start()
    try:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        cfg = parse_config(config(broker.bootstrap, topic, work / "lake-ingest"), environ={})
        ensure_topic(cfg.kafka)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=512 * 1024,
                                 enable_idempotence=False, acks=1)
        feats = {"chars": 42.0, "words": 8.0, "messages": 1.0, "user_turns": 1.0, "est_tokens": 11.0,
                 "non_ascii_share": 0.0, "digit_share": 0.05, "is_question": 1.0, "has_code": 0.0,
                 "last_user_chars": 42.0}
        t0 = time.perf_counter()
        for i in range(n_events // 4):
            unit, arm, rid = f"user-{i % 50_000}", "base" if i % 2 else "finetuned", str(uuid.uuid4())
            common = {"experiment": "support-ft", "phase": 1, "arm": arm, "unit_id": unit, "request_id": rid}
            for ev in (ExposureEvent(**common, requested_model="support-bot", upstream_model="m", features=feats),
                       ResponseEvent(**common, status_code=200, latency_ms=812.5, prompt_tokens=30,
                                     completion_tokens=120),
                       OutcomeEvent(**common, metric="resolved", value=float(i % 3 == 0)),
                       OutcomeEvent(**common, metric="csat", value=4.0)):
                producer.send(topic, key=unit.encode(), value=ev.to_json())
        producer.flush()
        produced = (n_events // 4) * 4
        print(f"produced {produced} events in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        stats = Ingestor(cfg).run(threading.Event(), until_caught_up=True)
        assert stats.events == produced, (stats.events, produced)
        return stats.events / (stats.seconds - CATCH_UP_IDLE_S), stats.events
    finally:
        broker.stop()


SYNTHETIC_LAKE = """
COPY (
  WITH units AS (
    SELECT range AS u, 'user-' || range AS unit_id,
           CASE WHEN hash(range) % 2 = 0 THEN 'base' ELSE 'finetuned' END AS arm,
           TIMESTAMPTZ '{week} 00:00:00+00' + to_seconds((hash(range * 7) % 604800)::BIGINT) AS t0,
           (1 + hash(range * 13) % 7)::BIGINT AS k
    FROM range({units})),
  reqs AS (SELECT u.*, unnest(range(k)) AS j FROM units u),
  exposures AS (
    SELECT uuid()::VARCHAR AS event_id, 'exposure' AS type, t0 + to_seconds(j * 60) AS ts, 'support-ft' AS experiment,
           1 AS phase, arm, unit_id, unit_id || '-' || j AS request_id, 'support-bot' AS requested_model,
           CASE WHEN arm = 'base' THEN 'm-base' ELSE 'm-ft' END AS upstream_model, false AS forced,
           NULL::VARCHAR AS features, NULL::INTEGER AS status_code, NULL::DOUBLE AS latency_ms,
           NULL::DOUBLE AS ttft_ms, NULL::BIGINT AS prompt_tokens, NULL::BIGINT AS completion_tokens,
           NULL::VARCHAR AS error, NULL::BOOLEAN AS stream, NULL::VARCHAR AS metric, NULL::DOUBLE AS value
    FROM reqs),
  responses AS (
    SELECT uuid()::VARCHAR, 'response', t0 + to_seconds(j * 60 + 1), 'support-ft', 1, arm, unit_id,
           unit_id || '-' || j, NULL, NULL, false, NULL,
           CASE WHEN random() < 0.01 THEN 503 ELSE 200 END,
           (CASE WHEN arm = 'base' THEN 800 ELSE 900 END) * exp(random() - 0.5), NULL,
           30, 100 + (random() * 50)::BIGINT, NULL, false, NULL, NULL
    FROM reqs),
  outcomes AS (
    SELECT uuid()::VARCHAR, 'outcome', t0 + to_seconds(3600), 'support-ft', 1, arm, unit_id, NULL, NULL, NULL,
           false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, m.metric,
           CASE m.metric WHEN 'resolved' THEN (random() < CASE WHEN arm = 'base' THEN 0.30 ELSE 0.33 END)::INT
                         WHEN 'escalated' THEN (random() < 0.10)::INT
                         ELSE 3 + random() * 2 END
    FROM units, (VALUES ('resolved'), ('escalated'), ('csat')) m(metric)),
  -- CUPED's pre-period data: for 60% of users, a resolved and a csat outcome posted without an
  -- experiment a week before their first exposure (partition experiment=_unattached)
  history AS (
    SELECT uuid()::VARCHAR, 'outcome', t0 - to_seconds(7 * 86400), '_unattached', NULL::INTEGER, NULL::VARCHAR,
           unit_id, NULL, NULL, NULL, NULL::BOOLEAN, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, m.metric,
           CASE m.metric WHEN 'resolved' THEN (random() < 0.30)::INT ELSE 3 + random() * 2 END
    FROM units, (VALUES ('resolved'), ('csat')) m(metric) WHERE hash(u * 31) % 10 < 6),
  allev AS (SELECT * FROM exposures UNION ALL SELECT * FROM responses UNION ALL SELECT * FROM outcomes
            UNION ALL SELECT * FROM history)
  SELECT *, strftime(ts, '%Y-%m-%d') AS date, 0::INTEGER AS kafka_partition,
         row_number() OVER () AS kafka_offset
  FROM allev
) TO '{lake}' (FORMAT PARQUET, PARTITION_BY (date, experiment), COMPRESSION ZSTD)
"""


def bench_report(units: int, work: Path) -> tuple[float, int, float]:
    """Return (report seconds, events, lake generation seconds) for a synthetic lake of ``units`` units."""
    lake = work / "lake-report"
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute(SYNTHETIC_LAKE.format(week=WEEK.isoformat(), units=units, lake=lake))
    events = con.execute(f"SELECT count(*) FROM read_parquet('{lake}/date=*/*/*.parquet')").fetchone()[0]
    con.close()
    gen_s = time.perf_counter() - t0
    cfg = parse_config(config("127.0.0.1:9", "unused", lake), environ={})
    t0 = time.perf_counter()
    rep = build_report(cfg, "support-ft", WEEK, date(2026, 11, 22), progress=False)
    html = to_html(rep)
    elapsed = time.perf_counter() - t0
    assert sum(rep.data.units.values()) == units, rep.data.units
    assert "data:image/png;base64," in html
    print(rep.verdict.sentence if rep.verdict else "no verdict", file=sys.stderr)
    return elapsed, events, gen_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--units", type=int, default=1_000_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="splitwatch-analyzer-bench-"))
    try:
        rate, n = bench_ingest(args.events, work)
        print(f"ingest: {n} events from Kafka into the lake at {rate:,.0f} events/s "
              f"(target 20,000/s: {'met' if rate >= 20_000 else 'MISSED'})")
        secs, events, gen = bench_report(args.units, work)
        print(f"report: {args.units:,} units, {events:,} events, one week, HTML with plots in {secs:.1f} s "
              f"(target < 30 s: {'met' if secs < 30 else 'MISSED'}); synthetic lake written in {gen:.1f} s")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"DuckDB {duckdb.__version__}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

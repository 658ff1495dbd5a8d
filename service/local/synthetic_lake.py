"""A seeded lake that exercises every counting rule of the KPI SQL, for the engine-equality tests and
the engine benchmark (``bench/engine_scaling.py``).

One experiment (``support-ft``, now in phase 2, with phase 1's events still in the lake) over two
days, and what each rule must handle: binary, continuous (capped at a quantile) and ratio outcomes
(per order and per request), latency quantiles, error rate, tokens and cost; CUPED history
(outcomes posted without an experiment, and another experiment's exposures, before each unit's first
exposure); returning units (exposed again on the second day: day-1 retention, sessions); outcomes after the attribution
window (late), before the first exposure (early), of units never exposed (orphans), of units only
served by forced requests; forced exposures; units seen in both arms; and every tenth event written
twice at another offset (delivery is at least once).
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from ..analyzer.lake import Lake, Record
from ..events import ExposureEvent, OutcomeEvent, ResponseEvent

EXPERIMENT = "support-ft"
ARMS = ("base", "finetuned")
MODELS = {"base": "m-base", "finetuned": "m-ft"}
WINDOW_HOURS = 24.0
CHUNK_UNITS = 100_000
"""Users generated, then written, at a time (about 1.4M events)."""


def synthetic_config(lake_dir: Path | str, engine: str = "duckdb") -> dict[str, Any]:
    """Return the config whose metrics and rules the synthetic lake exercises."""
    arms = [{"name": a, "weight": 50, "upstream": {"base_url": "http://127.0.0.1:9/v1", "model": MODELS[a]}}
            for a in ARMS]
    metrics = [
        {"name": "resolved", "kind": "binary", "direction": "increase", "role": "primary"},
        {"name": "csat", "kind": "continuous", "direction": "increase", "role": "secondary",
         "cap": {"quantile": 0.99}},
        {"name": "revenue_per_order", "kind": "ratio", "numerator": "revenue", "denominator": "orders",
         "direction": "increase", "role": "secondary"},
        {"name": "messages_per_request", "kind": "ratio", "numerator": "messages", "denominator": "requests",
         "direction": "decrease", "role": "secondary"},
        {"name": "escalated", "kind": "binary", "direction": "decrease", "role": "guardrail", "margin": 0.05},
        {"name": "latency_p95_ms", "role": "guardrail", "margin": 0.2, "relative_margin": True},
        # activity metrics, from the exposures alone (returns on the second day: day-1 retention, censored
        # for the units whose day 1 ends after the data)
        {"name": "retention_d1", "role": "secondary"},
        {"name": "sessions_per_unit", "role": "diagnostic", "session_gap_minutes": 60},
        {"name": "turns_per_session", "role": "diagnostic", "direction": "decrease"},
        {"name": "active_days", "role": "diagnostic"},
        {"name": "requests_per_unit", "role": "diagnostic", "cap": {"quantile": 0.99}},
    ]
    return {"analyzer": {"lake_dir": str(lake_dir), "engine": engine, "attribution_window_hours": WINDOW_HOURS,
                         "cuped": {"enabled": True, "lookback_days": 14},
                         "prices": {m: {"prompt_per_1k": 0.5, "completion_per_1k": 1.5} for m in MODELS.values()}},
            "experiments": [{"key": EXPERIMENT, "model": "support-bot", "phase": 2, "arms": arms,
                             "metrics": metrics}]}


# Past the size limits on purpose (pyproject.toml):
# test data; each branch plants one counting rule the engines must agree on (listed in the module)
def write_synthetic_lake(lake_dir: Path | str, first_day: date, units: int = 400, seed: int = 11,  # noqa: C901, PLR0915
                         span_hours: float = 40.0, partition: int = 0, prefix: str = "u") -> int:
    """Write the lake (see the module) with ``units`` users first exposed over the ``span_hours`` from
    ``first_day``, as Kafka ``partition``'s batches (several calls: several partitions, each with its own
    unit ``prefix``); return its events.

    Streamed: the users in order of their first exposure, ``CHUNK_UNITS`` at a time, each chunk's events
    written in the order they happen, so that memory holds one chunk (50M events need no more than 10M)
    and a batch covers a few days, as the analyzer's do."""
    rng = random.Random(seed)
    draw = random.Random(seed + 7919)
    firsts = [draw.uniform(0, span_hours * 3600) for _ in range(units)]
    events: list[Any] = []
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=1)
    lake = Lake(lake_dir)
    lake.recover([partition])
    written = [0, 0]  # events, next offset

    def flush() -> None:
        events.sort(key=lambda e: e.ts)  # in the order they happen (a batch: a few days)
        records = []
        for ev in events:
            records.append(Record(partition, written[1], ev.to_json()))
            if written[1] % 20 == 0:  # every tenth event delivered twice
                records.append(Record(partition, written[1] + 1, ev.to_json()))
            written[1] += 2
        for k in range(0, len(records), 5000):
            lake.write_batch(partition, records[k:k + 5000])
        written[0] += len(records)
        events.clear()

    def outcome(unit: str, metric: str, value: float, ts: datetime, arm: str | None, exp: str | None = EXPERIMENT,
                phase: int | None = 2) -> None:
        events.append(OutcomeEvent(experiment=exp, phase=phase if exp else None, arm=arm if exp else None,
                                   unit_id=unit, metric=metric, value=value, ts=ts))

    for n, i in enumerate(sorted(range(units), key=firsts.__getitem__)):
        if n and n % CHUNK_UNITS == 0:
            flush()
        unit = f"{prefix}-{i:05d}"
        arm = ARMS[i % 2]
        ft = arm == "finetuned"
        first = start + timedelta(seconds=firsts[i])
        # history: before the unit's first exposure (CUPED's pre-period), with and without an experiment
        if i % 3 == 0:
            outcome(unit, "resolved", float(rng.random() < 0.4), first - timedelta(days=3), None, exp=None)
            outcome(unit, "csat", float(rng.choice([2, 3, 4, 5])), first - timedelta(days=2), None, exp=None)
            outcome(unit, "revenue", rng.uniform(5, 50), first - timedelta(days=2), None, exp=None)
            outcome(unit, "orders", 1.0, first - timedelta(days=2), None, exp=None)
        if i % 5 == 0:
            events.append(ExposureEvent(experiment="other-exp", phase=1, arm="a", unit_id=unit, request_id=f"o-{unit}",
                                        requested_model="x", upstream_model="x", ts=first - timedelta(days=1)))
        if i % 17 == 0:  # phase 1, left out of phase 2's analysis
            events.append(ExposureEvent(experiment=EXPERIMENT, phase=1, arm=arm, unit_id=unit, request_id=f"p1-{unit}",
                                        requested_model="support-bot", upstream_model=MODELS[arm],
                                        ts=first - timedelta(days=5)))
        visits = [first] + ([first + timedelta(hours=rng.uniform(2, 20))] if i % 4 == 0 else []) \
            + ([first + timedelta(hours=30)] if i % 9 == 0 else [])  # a return after the window
        for v, ts in enumerate(visits):
            for k in range(rng.randint(1, 3)):
                rid = f"r-{unit}-{v}-{k}"
                t = ts + timedelta(seconds=k * 30)
                forced = i % 23 == 0 and k == 0
                common = {"experiment": EXPERIMENT, "phase": 2, "arm": arm, "unit_id": unit, "request_id": rid}
                # the conversation grows by a user turn a request; a third of the users write in Spanish
                features = {"user_turns": float(k + 1), "language": "es" if i % 3 == 0 else "en"}
                events.append(ExposureEvent(**common, requested_model="support-bot", upstream_model=MODELS[arm],
                                            forced=forced, ts=t, features=features))
                failed = rng.random() < (0.02 if ft else 0.04)
                events.append(ResponseEvent(**common, status_code=500 if failed else 200, forced=forced,
                                            latency_ms=rng.lognormvariate(6.7 if ft else 6.8, 0.4),
                                            prompt_tokens=rng.randint(20, 200), completion_tokens=rng.randint(10, 90),
                                            ts=t + timedelta(seconds=1)))
        if i % 31 == 0 and i:  # seen in both arms: assignment broken, excluded
            other = ARMS[(i + 1) % 2]
            events.append(ExposureEvent(experiment=EXPERIMENT, phase=2, arm=other, unit_id=unit,
                                        request_id=f"x-{unit}", requested_model="support-bot",
                                        upstream_model=MODELS[other], ts=first + timedelta(hours=1)))
        t = first + timedelta(hours=rng.uniform(0.1, 20))
        outcome(unit, "resolved", float(rng.random() < (0.55 if ft else 0.45)), t, arm)
        outcome(unit, "escalated", float(rng.random() < 0.1), t, arm)
        if rng.random() < 0.8:
            outcome(unit, "csat", float(rng.choice([3, 4, 4, 5] if ft else [2, 3, 4, 5])), t, arm)
        if i % 50 == 0:
            outcome(unit, "csat", 500.0, t, arm)  # an outlier: the cap's business
        orders = rng.randint(0, 3)
        if orders:
            outcome(unit, "orders", float(orders), t, arm)
            outcome(unit, "revenue", sum(rng.uniform(5, 60 if ft else 50) for _ in range(orders)), t, arm)
        outcome(unit, "messages", float(rng.randint(1, 8)), t, arm)
        if i % 11 == 0:
            outcome(unit, "resolved", 1.0, first + timedelta(hours=WINDOW_HOURS + 5), arm)  # late
        if i % 13 == 0:
            outcome(unit, "csat", 1.0, first - timedelta(minutes=5), arm)  # early
    for j in range(7):  # orphans, and outcomes of units only ever forced
        tag = "" if prefix == "u" else prefix
        outcome(f"ghost-{tag}{j}", "resolved", 1.0, start + timedelta(hours=j), "base")
        forced_unit = f"qa-{tag}{j}"
        events.append(ExposureEvent(experiment=EXPERIMENT, phase=2, arm="base", unit_id=forced_unit,
                                    request_id=f"qa-{forced_unit}", requested_model="support-bot",
                                    upstream_model="m-base",
                                    forced=True, ts=start + timedelta(hours=j)))
        outcome(forced_unit, "resolved", 1.0, start + timedelta(hours=j, minutes=5), "base")
    flush()
    return written[0]


def report_differences(a: Any, b: Any, rel: float = 1e-9, path: str = "") -> list[str]:
    """Return where two JSON reports differ: numbers beyond ``rel`` relative (1e-12 absolute), anything
    else when unequal (the engine tests and benchmark; Spark sums in another order than DuckDB)."""
    import math

    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in report_differences(a.get(k), b.get(k), rel, f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in report_differences(x, y, rel, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=rel, abs_tol=1e-12) else [f"{path}: {a} against {b}"]
    return [] if a == b else [f"{path}: {a!r} against {b!r}"]

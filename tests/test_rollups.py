"""Issue 28: daily rollups. A report read from the rollups (the period's files, its units' rolled-up
events, the pool, the index) equals the full recomputation from the whole lake, for every period,
also after late events arrive for days already rolled up; a refresh reads only the new batches and
rewrites only the days they touch."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from splitwatch.service.analyzer.lake import Lake, Record
from splitwatch.service.analyzer.report import build_report
from splitwatch.service.analyzer.report_formats import RENDERERS
from splitwatch.service.analyzer.rollups import Rollups
from splitwatch.service.config import parse_config
from splitwatch.service.events import ExposureEvent, OutcomeEvent
from splitwatch.service.local.synthetic_lake import (
    EXPERIMENT,
    MODELS,
    WINDOW_HOURS,
    report_differences,
    synthetic_config,
    write_synthetic_lake,
)

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def _report(lake_dir: Path | str, start: date, end: date, rollups: bool, engine: str = "duckdb") -> dict:
    raw = synthetic_config(lake_dir, engine)
    raw["analyzer"]["rollups"] = rollups
    raw["analyzer"]["spark"] = {"master": "local[2]"}
    cfg = parse_config(raw, environ={})
    return json.loads(RENDERERS["json"](build_report(cfg, EXPERIMENT, start, end, progress=False)))


def _periods(day: date) -> list[tuple[date, date]]:
    return [(day, day), (day + timedelta(days=1), day + timedelta(days=1)), (day, day + timedelta(days=2))]


def _assert_same_reports(lake_dir: Path, day: date) -> None:
    for start, end in _periods(day):
        full, rolled = _report(lake_dir, start, end, False), _report(lake_dir, start, end, True)
        assert sum(full["units"].values()) > 0, (start, end)
        assert report_differences(full, rolled) == [], (start, end)


def _late_batch(lake_dir: Path, day: date) -> list[Record]:
    """Events that arrive after the first refresh, for units and days already rolled up."""
    con = duckdb.connect()
    firsts = con.execute(
        "SELECT unit_id, arm, min(ts) FROM read_parquet(?) WHERE type = 'exposure' AND phase = 2 AND NOT forced "
        "AND unit_id LIKE 'u-%' GROUP BY unit_id, arm HAVING count(DISTINCT arm) = 1 ORDER BY 3",
        [str(lake_dir / "date=*" / f"experiment={EXPERIMENT}" / "*.parquet")]).fetchall()
    con.close()
    early_unit, early_arm, early_first = firsts[0]  # first exposed on the first day
    late_unit, late_arm, _ = firsts[-1]  # first exposed on the last day
    events = [
        # a late outcome (after the window) and an attributed one for a unit of the first day
        OutcomeEvent(experiment=EXPERIMENT, phase=2, arm=early_arm, unit_id=early_unit, metric="resolved", value=1.0,
                     ts=early_first + timedelta(hours=WINDOW_HOURS + 1)),
        OutcomeEvent(experiment=EXPERIMENT, phase=2, arm=early_arm, unit_id=early_unit, metric="csat", value=5.0,
                     ts=early_first + timedelta(hours=1)),
        # an exposure older than a unit's recorded first one: the unit moves to the first day
        ExposureEvent(experiment=EXPERIMENT, phase=2, arm=late_arm, unit_id=late_unit, request_id="late-first",
                      requested_model="support-bot", upstream_model=MODELS[late_arm],
                      ts=datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=2)),
        # an orphan outcome's unit is finally exposed: its outcome becomes an early one
        ExposureEvent(experiment=EXPERIMENT, phase=2, arm="base", unit_id="ghost-3", request_id="ghost-exposed",
                      requested_model="support-bot", upstream_model=MODELS["base"],
                      ts=datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=20)),
        # a pre-period outcome posted without an experiment (CUPED history), and a new unit on day 2
        OutcomeEvent(experiment=None, phase=None, arm=None, unit_id=early_unit, metric="csat", value=2.0,
                     ts=early_first - timedelta(days=1)),
        ExposureEvent(experiment=EXPERIMENT, phase=2, arm="finetuned", unit_id="newcomer", request_id="nc-1",
                      requested_model="support-bot", upstream_model=MODELS["finetuned"],
                      ts=datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
                      + timedelta(hours=5)),
        OutcomeEvent(experiment=EXPERIMENT, phase=2, arm="finetuned", unit_id="newcomer", metric="resolved",
                     value=1.0, ts=datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
                     + timedelta(hours=6)),
    ]
    records = [Record(1, 1000 + i, e.to_json()) for i, e in enumerate(events)]
    records.append(Record(1, 1000 + len(events), events[0].to_json()))  # delivered twice
    return records


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, date]:
    base = tmp_path_factory.mktemp("rollups")
    day = datetime.now(UTC).date() - timedelta(days=4)
    write_synthetic_lake(base / "lake", day, units=300)
    return base / "lake", day


def test_reports_from_rollups_equal_the_full_recomputation_also_after_late_events(lake: tuple[Path, date]) -> None:
    lake_dir, day = lake
    cfg = parse_config({**synthetic_config(lake_dir)}, environ={})
    rollups = Rollups(Lake(lake_dir), cfg.experiment(EXPERIMENT), cfg.analyzer)
    first = rollups.refresh()
    assert first.rebuilt and first.batches == len(Lake(lake_dir).markers()) and first.new_units > 250
    assert rollups.refresh().batches == 0  # nothing new: nothing read
    _assert_same_reports(lake_dir, day)
    # late events for days already rolled up
    Lake(lake_dir).write_batch(1, _late_batch(lake_dir, day))
    again = rollups.refresh()
    assert (again.batches, again.events, again.rebuilt) == (1, 7, False)  # the unattached outcome is elsewhere
    assert again.new_units == 2 and again.moved_units == 1  # ghost-3 and the newcomer; one unit moved
    assert again.unit_days == 2  # the first day (moves in, a late outcome) and the last (moved out, newcomer)
    _assert_same_reports(lake_dir, day)
    # and the refresh is repeatable: the same batches rolled up twice change nothing
    state = Path(lake_dir / f"_rollups/experiment={EXPERIMENT}/phase=2/state.json")
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({**saved, "next_offsets": {"0": saved["next_offsets"]["0"]}}))
    assert rollups.refresh().batches == 1
    _assert_same_reports(lake_dir, day)


def test_the_report_reads_only_its_days(lake: tuple[Path, date]) -> None:
    lake_dir, day = lake
    cfg = parse_config(synthetic_config(lake_dir), environ={})
    rollups = Rollups(Lake(lake_dir), cfg.experiment(EXPERIMENT), cfg.analyzer)
    rollups.refresh()
    start = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    files = rollups.period_files(start, start + timedelta(days=1))
    assert files and all(f"date={(day + timedelta(days=1)).isoformat()}/" in f for f in files)
    con = duckdb.connect()
    rollups.prepare(con, start, start + timedelta(days=1))
    # no response of the units of the day before (only the pool's, of units never exposed: forced ones)
    outside = con.execute("SELECT count(*), count(*) FILTER (WHERE forced) FROM ev WHERE ts < ? AND type = 'response'",
                          [start]).fetchone()
    assert outside[0] == outside[1]
    everything = con.execute("SELECT count(*) FROM read_parquet(?) WHERE phase = 2",
                             [str(lake_dir / "date=*" / f"experiment={EXPERIMENT}" / "*.parquet")]).fetchone()[0]
    assert con.execute("SELECT count(*) FROM ev").fetchone()[0] < everything  # the benchmark measures how much
    con.close()
    with pytest.raises(ValueError, match="no rolled-up events"):
        Rollups(Lake(lake_dir.parent / "empty"), cfg.experiment(EXPERIMENT), cfg.analyzer).prepare(
            duckdb.connect(), start, start + timedelta(days=1))


@pytest.mark.slow
def test_the_report_from_rollups_on_spark_equals_duckdbs_full_recomputation(lake: tuple[Path, date]) -> None:
    lake_dir, day = lake
    start, end = day, day + timedelta(days=1)
    full = _report(lake_dir, start, end, False)
    assert report_differences(full, _report(lake_dir, start, end, True, engine="spark")) == []


def test_a_first_refresh_in_chunks_gives_the_same_reports(tmp_path: Path, monkeypatch) -> None:
    """A large lake is rolled up a chunk of batches at a time (bounded memory); here one batch per chunk, of a
    lake itself written in chunks of 60 users (the generator streams large lakes)."""
    from splitwatch.service.analyzer import rollups as rollups_module
    from splitwatch.service.local import synthetic_lake

    monkeypatch.setattr(synthetic_lake, "CHUNK_UNITS", 60)
    day = datetime.now(UTC).date() - timedelta(days=4)
    write_synthetic_lake(tmp_path / "lake", day, units=400, partition=0, prefix="a")
    write_synthetic_lake(tmp_path / "lake", day, units=150, seed=5, partition=1, prefix="b")
    monkeypatch.setattr(rollups_module, "REFRESH_CHUNK_EVENTS", 1)
    cfg = parse_config(synthetic_config(tmp_path / "lake"), environ={})
    stats = Rollups(Lake(tmp_path / "lake"), cfg.experiment(EXPERIMENT), cfg.analyzer).refresh()
    assert stats.batches == len(Lake(tmp_path / "lake").markers()) >= 9
    _assert_same_reports(tmp_path / "lake", day)

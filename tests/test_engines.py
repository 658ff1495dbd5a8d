"""Issue 28: the KPI SQL on Spark as well as DuckDB. The statements are parsed once (sqlglot) and
rendered per engine from the syntax tree; on the same lake, Spark's sufficient statistics equal
DuckDB's to 1e-9 relative for every metric kind and counting rule, and `splitwatch report --engine
spark --format json` equals `--engine duckdb`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlglot
import yaml

from splitwatch.service.analyzer.engines import attach_lake, bind, to_spark
from splitwatch.service.analyzer.kpi_queries import load_experiment, prepare_events
from splitwatch.service.analyzer.lake import Lake
from splitwatch.service.config import parse_config
from splitwatch.service.local.processes import ObjectStore, splitwatch_command
from splitwatch.service.local.synthetic_lake import (
    EXPERIMENT,
    report_differences,
    synthetic_config,
    write_synthetic_lake,
)

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def test_statements_are_changed_as_trees_never_as_text() -> None:
    sql = ("SELECT quantile_cont(latency_ms, [?, ?]) FROM read_parquet(?, union_by_name = true) "
           "WHERE arm = ? AND ts >= ?")
    tree = bind(sqlglot.parse_one(sql, read="duckdb"),
                [0.5, 0.95, "/data/team's lake/*.parquet", "it's", datetime(2026, 1, 2, 3, tzinfo=UTC)])
    spark = to_spark(tree, lambda path: "lake_view" if path == "/data/team's lake/*.parquet" else "wrong")
    assert spark == ("SELECT PERCENTILE(latency_ms, ARRAY(CAST(0.5 AS DOUBLE), CAST(0.95 AS DOUBLE))) FROM lake_view "
                     "WHERE arm = 'it\\'s' AND ts >= CAST('2026-01-02 03:00:00' AS TIMESTAMP)")
    with pytest.raises(ValueError, match="2 placeholders, 1 parameters"):
        bind(sqlglot.parse_one("SELECT ? + ?", read="duckdb"), [1])


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime]:
    base = tmp_path_factory.mktemp("engines")
    day = datetime.now(UTC).date() - timedelta(days=3)
    write_synthetic_lake(base / "lake", day, units=500)
    return base, datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _flat(stats: object) -> list[float]:
    out = []
    for v in (getattr(stats, f.name) for f in dataclasses.fields(stats)):  # type: ignore[arg-type]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(float(v))
        elif isinstance(v, tuple):
            out += [float(x) for row in v for x in (row if isinstance(row, tuple) else (row,))]
    return out


def _statistics(location: str | Path, start: datetime) -> dict[str, object]:
    """Return each engine's ExperimentData of the synthetic lake at ``location`` (a path or an s3 URI)."""
    import duckdb

    from splitwatch.service.analyzer.engines import connect

    cfg = parse_config(synthetic_config(location), environ={})
    exp = cfg.experiment(EXPERIMENT)
    store = Lake(location)
    found = {}
    for engine, con in (("duckdb", duckdb.connect()), ("spark", connect("spark", "local[2]"))):
        attach_lake(con, store)
        try:
            prepare_events(con, store.glob(EXPERIMENT), exp.phase, store.glob("*"), EXPERIMENT)
            found[engine] = load_experiment(con, None, exp, cfg.analyzer, start, start + timedelta(days=3))
        finally:
            con.close()
    return found


def _assert_equal_statistics(d: object, s: object) -> None:
    """Every rule has something to count, and both engines count it the same (1e-9 relative)."""
    for field in ("multi_arm_units", "orphan_outcomes", "late_outcomes", "forced_requests", "early_outcomes",
                  "forced_only_outcomes"):
        assert getattr(d, field) > 0 and getattr(d, field) == getattr(s, field), field
    assert d.units == s.units and d.requests == s.requests and sum(d.units.values()) > 400
    assert d.skipped == s.skipped == {}
    assert set(d.history_share) == {"resolved", "csat", "revenue_per_order", "messages_per_request"}
    for metric, share in d.history_share.items():
        assert 0 < share < 1 and _close(share, s.history_share[metric]), metric
    assert d.caps.keys() == s.caps.keys() == {"csat", "requests_per_unit"}
    assert all(_close(d.caps[m], s.caps[m]) for m in d.caps)
    assert d.censored == s.censored and 0 < d.censored["retention_d1"] < sum(d.units.values())
    names = {m.name for m in d.metrics}
    assert {"latency_p50_ms", "latency_p95_ms", "error_rate", "completion_tokens_per_request",
            "cost_per_request", "retention_d1", "sessions_per_unit", "turns_per_session", "active_days",
            "requests_per_unit"} <= names
    for arm, per_metric in d.stats.items():
        for metric, stats in per_metric.items():
            other = s.stats[arm][metric]
            assert type(stats) is type(other), (arm, metric)
            a, b = _flat(stats), _flat(other)
            assert len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True)), (arm, metric, a, b)


@pytest.mark.slow
def test_spark_statistics_equal_duckdbs_for_every_rule(lake: tuple[Path, datetime]) -> None:
    base, start = lake
    found = _statistics(base / "lake", start)
    _assert_equal_statistics(found["duckdb"], found["spark"])


def _report(config: Path, engine: str, day: str, to: str, env: dict[str, str] | None = None,
            rollups: bool = False) -> dict:
    res = subprocess.run(splitwatch_command("report", "--config", str(config), "--experiment", EXPERIMENT, "--from",
                                            day, "--to", to, "--format", "json", "--engine", engine,
                                            "--spark-master", "local[2]", "--rollups" if rollups else "--no-rollups"),
                         capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.mark.slow
def test_the_report_from_spark_equals_the_report_from_duckdb(lake: tuple[Path, datetime]) -> None:
    base, start = lake
    config = base / "cfg.yaml"
    config.write_text(yaml.safe_dump(synthetic_config(base / "lake")))
    day, to = start.date().isoformat(), (start.date() + timedelta(days=1)).isoformat()
    duck, spark = _report(config, "duckdb", day, to), _report(config, "spark", day, to)
    assert report_differences(duck, spark) == []  # the JSON report has no timing field
    assert sum(duck["units"].values()) > 400 and len(duck["results"]) >= 10


@pytest.fixture(scope="module")
def s3_lake(tmp_path_factory: pytest.TempPathFactory, lake: tuple[Path, datetime]):
    """The same synthetic lake (same seed and day), written to an S3-protocol server on loopback through
    pyarrow's S3 filesystem."""
    start = lake[1]
    server = ObjectStore(tmp_path_factory.mktemp("s3"))
    saved = {k: os.environ.get(k) for k in ObjectStore.CREDENTIALS}
    os.environ.update(ObjectStore.CREDENTIALS)  # pyarrow, boto3 and Spark's executors read the credentials here
    server.start()
    try:
        uri = server.lake_uri("team's lake/events")  # a quote in the path: never pasted into SQL
        write_synthetic_lake(uri, start.date(), units=500)
        yield uri, start
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_a_lake_on_s3_is_read_by_both_engines_with_the_same_numbers(s3_lake: tuple[str, datetime],
                                                                     lake: tuple[Path, datetime]) -> None:
    uri, start = s3_lake
    store = Lake(uri)
    local_markers = Lake(lake[0] / "lake").markers()
    assert store.storage.object_store and store.has_files(EXPERIMENT)
    assert [m["files"] for m in store.markers()] == [m["files"] for m in local_markers]
    assert not any(Path(".").glob("**/team's lake"))  # nothing written locally: it is all in the bucket
    found = _statistics(uri, start)
    _assert_equal_statistics(found["duckdb"], found["spark"])
    local = _statistics(lake[0] / "lake", start)["duckdb"]  # the same events in a local lake
    assert found["duckdb"].units == local.units
    for arm, per_metric in local.stats.items():
        for metric, stats in per_metric.items():
            assert _flat(stats) == pytest.approx(_flat(found["duckdb"].stats[arm][metric]), rel=1e-12), metric


@pytest.mark.slow
def test_the_report_of_an_s3_lake_is_the_same_from_both_engines(s3_lake: tuple[str, datetime],
                                                                 lake: tuple[Path, datetime]) -> None:
    uri, start = s3_lake
    config = lake[0] / "cfg-s3.yaml"
    config.write_text(yaml.safe_dump(synthetic_config(uri)))
    day, to = start.date().isoformat(), (start.date() + timedelta(days=1)).isoformat()
    duck, spark = _report(config, "duckdb", day, to, ObjectStore.CREDENTIALS), _report(config, "spark", day, to,
                                                                               ObjectStore.CREDENTIALS)
    assert report_differences(duck, spark) == []
    local_config = lake[0] / "cfg.yaml"
    local_config.write_text(yaml.safe_dump(synthetic_config(lake[0] / "lake")))
    assert report_differences(_report(local_config, "duckdb", day, to), duck) == []
    assert sum(duck["units"].values()) > 400
    # the daily rollups, kept in the bucket beside the events, give the same report
    assert report_differences(duck, _report(config, "duckdb", day, to, ObjectStore.CREDENTIALS, rollups=True)) == []
    assert Lake(uri).storage.list(f"_rollups/experiment={EXPERIMENT}/phase=2/units/day=*.parquet")


@pytest.mark.slow
def test_spark_submit_of_the_charts_main_file_gives_the_same_report(s3_lake: tuple[str, datetime],
                                                                    lake: tuple[Path, datetime]) -> None:
    """The ScheduledSparkApplication's command, run by pyspark's own spark-submit (a local master here, a
    cluster's in production): the session is spark-submit's, and the report equals DuckDB's."""
    import shutil
    import sys

    uri, start = s3_lake
    config = lake[0] / "cfg-submit.yaml"
    config.write_text(yaml.safe_dump(synthetic_config(uri)))
    day, to = start.date().isoformat(), (start.date() + timedelta(days=1)).isoformat()
    main_file = Path(__file__).resolve().parent.parent / "service" / "analyzer" / "spark_report.py"
    submit = shutil.which("spark-submit", path=str(Path(sys.executable).parent))
    assert submit is not None, "pyspark's spark-submit is not beside this interpreter"
    out = lake[0] / "weekly"
    res = subprocess.run([submit, "--master", "local[2]", "--conf", "spark.sql.shuffle.partitions=3",
                          "--conf", "spark.pyspark.driver.python=" + sys.executable, str(main_file),
                          "--config", str(config), "--experiment", EXPERIMENT, "--from", day, "--to", to,
                          "--format", "json", "--output", f"{out}/"],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, **ObjectStore.CREDENTIALS, "PYSPARK_PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr[-3000:]
    (written,) = out.iterdir()
    assert written.name == f"{EXPERIMENT}-{day}-{to}.json"  # --output as a directory
    duck = _report(config, "duckdb", day, to, ObjectStore.CREDENTIALS)
    assert report_differences(duck, json.loads(written.read_text())) == []

"""`splitwatch report` on a lake written directly (no processes): periods, formats, empty data, messages."""

from __future__ import annotations

import json
import random
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import yaml

from splitwatch.service.analyzer.lake import Lake, Record
from splitwatch.service.events import ExposureEvent, OutcomeEvent, ResponseEvent
from splitwatch.service.local.processes import splitwatch_command
from splitwatch.service.proxy.assignment import bucket_of

ARMS = [{"name": "base", "weight": 50, "upstream": {"base_url": "http://127.0.0.1:9/v1", "model": "a"}},
        {"name": "finetuned", "weight": 50, "upstream": {"base_url": "http://127.0.0.1:9/v1", "model": "b"}}]


def _config(tmp_path: Path) -> Path:
    cfg = {"analyzer": {"lake_dir": str(tmp_path / "lake"), "cuped": {"enabled": False}},
           "experiments": [{"key": "support-ft", "model": "support-bot", "arms": ARMS,
                            "metrics": [{"name": "resolved", "kind": "binary", "direction": "increase",
                                         "role": "primary", "description": "the ticket was solved"},
                                        {"name": "csat", "kind": "continuous", "direction": "increase"},
                                        {"name": "escalated", "kind": "binary", "direction": "decrease",
                                         "role": "guardrail", "margin": 0.05},
                                        {"name": "latency_p95_ms", "role": "guardrail", "margin": 0.2,
                                         "relative_margin": True}]}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _write_lake(tmp_path: Path, day: date, units: int = 60, days: int = 1, skew: bool = False) -> None:
    lake = Lake(tmp_path / "lake")
    lake.recover()
    records, offset = [], 0
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=10)
    rng = random.Random(3)
    for i in range(units):
        unit = f"u-{i}"
        arm = "base" if bucket_of("support-ft", unit) < 5000 or (skew and i % 3 == 0) else "finetuned"
        ft = arm == "finetuned"
        ts = start + timedelta(days=i * days // units, seconds=i)
        common = {"experiment": "support-ft", "phase": 1, "arm": arm, "unit_id": unit, "request_id": f"r-{i}",
                  "ts": ts}
        later = {**common, "ts": ts + timedelta(seconds=1)}
        for ev in (ExposureEvent(**common, requested_model="support-bot", upstream_model=arm),
                   ResponseEvent(**common, status_code=200, latency_ms=rng.gauss(900 if ft else 1000, 150)),
                   OutcomeEvent(**later, metric="resolved", value=float(rng.random() < (0.55 if ft else 0.45))),
                   OutcomeEvent(**later, metric="csat", value=float(rng.choice([3, 4, 4, 5] if ft else [3, 4, 5]))),
                   OutcomeEvent(**later, metric="escalated", value=float(rng.random() < 0.1))):
            records.append(Record(0, offset, ev.to_json()))
            offset += 1
    if skew:  # and an outcome of a unit never exposed
        orphan = OutcomeEvent(experiment="support-ft", phase=1, arm=None, unit_id="nobody", metric="resolved",
                              value=1.0, ts=start)
        records.append(Record(0, offset, orphan.to_json()))
    lake.write_batch(0, records)


def _report(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(splitwatch_command("report", "--config", str(config), "--experiment", "support-ft", *args),
                          capture_output=True, text=True, timeout=120)


def test_an_empty_lake_gets_one_line_with_a_hint(tmp_path: Path) -> None:
    res = _report(_config(tmp_path))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "has no exposures of support-ft's current phase: run `splitwatch analyzer" in res.stderr


def test_an_empty_default_week_suggests_the_period_with_data(tmp_path: Path) -> None:
    config = _config(tmp_path)
    today = datetime.now(UTC).date()
    _write_lake(tmp_path, today)
    res = _report(config)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "no unit of support-ft was first exposed in the last full ISO week" in res.stderr
    assert f"try --from {today} --to {today}" in res.stderr


def test_from_alone_runs_to_today_and_the_format_follows_the_extension(tmp_path: Path) -> None:
    config = _config(tmp_path)
    today = datetime.now(UTC).date()
    _write_lake(tmp_path, today - timedelta(days=1))
    out = tmp_path / "r.json"
    res = _report(config, "--from", str(today - timedelta(days=3)), "--output", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["to"] == today.isoformat() and sum(report["units"].values()) == 60
    html = tmp_path / "r.html"
    res = _report(config, "--from", str(today - timedelta(days=3)), "--output", str(html))
    assert res.returncode == 0 and html.read_text().startswith("<!doctype html>")
    assert "INFO" not in res.stderr  # no library log lines (matplotlib logged 24)
    md = _report(config, "--from", str(today - timedelta(days=3)))
    assert md.stdout.startswith("# splitwatch report: support-ft")
    # an explicit --format wins over the extension
    res = _report(config, "--from", str(today - timedelta(days=3)), "--output", str(tmp_path / "x.html"),
                  "--format", "md")
    assert (tmp_path / "x.html").read_text().startswith("# splitwatch report")
    bad = _report(config, "--from", str(today), "--to", str(today - timedelta(days=2)))
    assert bad.returncode == 2 and "is before --from" in bad.stderr
    unknown = subprocess.run(splitwatch_command("report", "--config", str(config), "--experiment", "nope"),
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and "--experiment: no experiment 'nope'" in unknown.stderr


def test_a_mismatch_and_data_quality_issues_are_banners_in_every_format(tmp_path: Path) -> None:
    config = _config(tmp_path)
    today = datetime.now(UTC).date()
    _write_lake(tmp_path, today, units=600, skew=True)
    args = ("--from", str(today))
    md = _report(config, *args).stdout
    assert "> **Error:** Sample ratio mismatch" in md and "> **Warning:** Data quality: 1 outcomes of units never " \
        "exposed" in md
    html = _report(config, *args, "--format", "html").stdout
    assert '<div class="banner error">Sample ratio mismatch' in html and 'data-decision="invalid"' in html
    report = json.loads(_report(config, *args, "--format", "json").stdout)
    assert [b["level"] for b in report["banners"]] == ["error", "warning"]
    assert report["verdict"]["decision"] == "invalid"


def test_a_lake_whose_path_holds_a_quote_is_read(tmp_path: Path) -> None:
    # issue 28: the lake's paths are bound as parameters, never pasted into the SQL (it used to fail here)
    base = tmp_path / "team's lake"
    base.mkdir()
    config = _config(base)
    cfg = yaml.safe_load(config.read_text())
    cfg["analyzer"]["cuped"] = {"enabled": True}  # the whole-lake history query too
    config.write_text(yaml.safe_dump(cfg))
    day = datetime.now(UTC).date() - timedelta(days=1)
    _write_lake(base, day, units=200)
    res = _report(config, "--from", str(day), "--to", str(day), "--format", "json")
    assert res.returncode == 0, res.stderr
    assert sum(json.loads(res.stdout)["units"].values()) == 200

"""Activity metrics (retention, requests, active days, sessions, turns per session) against an independent
computation from the raw events.

Seeded events of two arms over twelve days are written through the analyzer's own lake writer; the
report covers the first ten. Each expected value is computed here in plain Python from the list of
events the test wrote (no SQL), with the censoring rule stated in docs/analyzer.md: a unit whose
retention window ends after the data (the period's end) is left out, and counted. Tolerance: 1e-9
relative (sums of a few hundred floats).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from splitwatch.service.analyzer.lake import Lake, Record
from splitwatch.service.analyzer.report import build_report
from splitwatch.service.analyzer.report_json import to_dict
from splitwatch.service.config import ConfigError, parse_config
from splitwatch.service.events import ExposureEvent, OutcomeEvent

KEY = "activity"
FIRST_DAY = date(2026, 11, 2)
START = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=UTC)
PERIOD_DAYS = 10
WINDOW_H = 72.0
GAP_MIN = 30.0
DAY = timedelta(days=1)


def _plan(seed: int = 5) -> list[tuple[str, str, datetime, int, bool]]:
    """Return exposures (unit, arm, ts, user turns, forced): each unit's visits over days, a few requests a visit."""
    rng = random.Random(seed)
    rows = []
    for i in range(160):
        arm = ("base", "ft")[i % 2]
        unit = f"u{i}"
        first = START + timedelta(seconds=rng.uniform(0, PERIOD_DAYS * 86400 - 1))
        back = 0.45 if arm == "ft" else 0.15  # the candidate's users return more
        visits = [first] + [first + timedelta(days=d, hours=rng.uniform(-3, 3))
                            for d in range(1, 10) if rng.random() < back]
        visits += [first + timedelta(minutes=rng.uniform(5, 29))] if rng.random() < 0.3 else []  # same session
        visits += [first + timedelta(minutes=rng.uniform(31, 90))] if rng.random() < 0.3 else []  # a new one
        for v in sorted(t for t in visits if t >= first):
            for k in range(rng.randint(1, 3)):
                rows.append((unit, arm, v + timedelta(seconds=20 * k), k + 1 + rng.randint(0, 2), False))
        if i % 13 == 0:  # a forced (QA) request: never an activity
            rows.append((unit, arm, first + timedelta(days=1, hours=1), 9, True))
    return rows


def _write(rows: list[tuple[str, str, datetime, int, bool]], root: Path) -> None:
    events = []
    for n, (unit, arm, ts, turns, forced) in enumerate(rows):
        events.append(ExposureEvent(experiment=KEY, phase=1, arm=arm, unit_id=unit, request_id=f"r{n}", ts=ts,
                                    requested_model="m", upstream_model=f"up-{arm}", forced=forced,
                                    features={"user_turns": float(turns)}).to_json())
    # an outcome so that the experiment has a primary; it plays no part in the activity metrics
    events += [OutcomeEvent(experiment=KEY, phase=1, arm=arm, unit_id=u, metric="resolved", value=1.0,
                            ts=ts + timedelta(minutes=1)).to_json() for u, arm, ts, _, _ in rows[::7]]
    Lake(root).write_batch(0, [Record(0, i, v) for i, v in enumerate(events)])


def _config(root: Path) -> object:
    return parse_config({"analyzer": {"lake_dir": str(root), "attribution_window_hours": WINDOW_H,
                                      "cuped": {"enabled": False}}, "experiments": [{
        "key": KEY, "model": "m", "arms": [
            {"name": "base", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-base"}},
            {"name": "ft", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": "up-ft"}}],
        "metrics": [{"name": "resolved", "kind": "binary", "role": "primary"},
                    {"name": "retention_d1", "role": "secondary"},
                    {"name": "retention_d7", "role": "secondary"},
                    {"name": "came_back_days_2_to_4", "activity": "retention", "day": 2, "window_days": 3},
                    {"name": "came_back_week_2", "activity": "retention", "day": 7, "window_days": 7},
                    {"name": "requests_per_unit", "role": "secondary"},
                    {"name": "active_days", "role": "secondary"},
                    {"name": "sessions_per_unit", "role": "secondary", "session_gap_minutes": GAP_MIN},
                    {"name": "turns_per_session", "role": "secondary", "direction": "decrease",
                     "session_gap_minutes": GAP_MIN}]}]}, environ={})


def _expected(rows: list[tuple[str, str, datetime, int, bool]]) -> dict[str, dict[str, tuple[int, float]]]:
    """Return per metric and arm (units counted, the arm's value), computed from the rows alone."""
    mine = sorted((r for r in rows if not r[4]), key=lambda r: (r[0], r[2]))
    by_unit: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    arm_of = {}
    for unit, arm, ts, turns, _ in mine:
        by_unit[unit].append((ts, turns))
        arm_of[unit] = arm
    end = START + PERIOD_DAYS * DAY
    horizon = min(end, max(ts for _, _, ts, _, _ in rows))  # the newest request before the period's end
    values: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    censored: dict[str, int] = defaultdict(int)
    for unit, visits in by_unit.items():
        first = visits[0][0]
        if not START <= first < end:
            continue
        arm = arm_of[unit]
        since = [((ts - first) / timedelta(microseconds=1), turns) for ts, turns in visits]
        for name, day, width in (("retention_d1", 1, 1), ("retention_d7", 7, 1), ("came_back_days_2_to_4", 2, 3),
                                 ("came_back_week_2", 7, 7)):
            lo, hi = day * 86400e6, (day + width) * 86400e6
            if first + timedelta(microseconds=hi) > horizon:
                censored[name] += 1
                continue
            values[name][arm].append((float(any(lo <= s < hi for s, _ in since)), 1.0))
        window = [(s, t) for s, t in since if s <= WINDOW_H * 3600e6]
        values["requests_per_unit"][arm].append((float(len(window)), 1.0))
        values["active_days"][arm].append((float(len({math.floor(s / 86400e6) for s, _ in window})), 1.0))
        sessions: list[int] = []
        last = None
        for s, t in window:
            if last is None or s - last > GAP_MIN * 60e6:
                sessions.append(t)
            else:
                sessions[-1] = max(sessions[-1], t)
            last = s
        values["sessions_per_unit"][arm].append((float(len(sessions)), 1.0))
        values["turns_per_session"][arm].append((float(sum(sessions)), float(len(sessions))))
    out: dict[str, dict[str, tuple[int, float]]] = {}
    for name, per_arm in values.items():
        out[name] = {arm: (len(v), sum(a for a, _ in v) / sum(b for _, b in v)) for arm, v in per_arm.items()}
    out["_censored"] = {k: (v, 0.0) for k, v in censored.items()}
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    rows = _plan()
    root = tmp_path_factory.mktemp("activity") / "lake"
    # the data runs two days past the period: retention is censored at the period's end, not at the data's
    rows.append(("late", "base", START + (PERIOD_DAYS + 2) * DAY, 1, False))
    _write(rows, root)
    rep = to_dict(build_report(_config(root), KEY, FIRST_DAY, FIRST_DAY + (PERIOD_DAYS - 1) * DAY, progress=False))
    return rep, _expected(rows)


@pytest.mark.parametrize("metric", ["retention_d1", "retention_d7", "came_back_days_2_to_4", "requests_per_unit",
                                    "active_days", "sessions_per_unit", "turns_per_session"])
def test_each_activity_metric_equals_the_independent_computation(report: tuple[dict, dict], metric: str) -> None:
    rep, expected = report
    (row,) = [r for r in rep["results"] if r["metric"] == metric]
    want = expected[metric]
    assert (row["control_n"], row["treatment_n"]) == (want["base"][0], want["ft"][0])
    assert math.isclose(row["control_value"], want["base"][1], rel_tol=1e-9)
    assert math.isclose(row["treatment_value"], want["ft"][1], rel_tol=1e-9)


def test_units_whose_window_ends_after_the_data_are_left_out_and_counted(report: tuple[dict, dict]) -> None:
    rep, expected = report
    vocabulary = {m["metric"]: m for m in rep["metrics"]}
    for metric in ("retention_d1", "retention_d7", "came_back_days_2_to_4"):
        count = expected["_censored"][metric][0]
        assert vocabulary[metric]["censored_units"] == count > 0
        assert f"{count:,} users left out" in vocabulary[metric]["definition"]
    # a wider window leaves out more units; every unit is either counted or left out
    counted = {m: sum(r[k] for r in rep["results"] if r["metric"] == m for k in ("control_n", "treatment_n"))
               for m in ("retention_d1", "came_back_days_2_to_4")}
    assert expected["_censored"]["came_back_days_2_to_4"][0] > expected["_censored"]["retention_d1"][0]
    assert len({counted[m] + expected["_censored"][m][0] for m in counted}) == 1
    assert vocabulary["sessions_per_unit"]["censored_units"] is None
    # a window past the data for every unit: the metric is skipped, and the report says why
    assert rep["skipped_metrics"]["came_back_week_2"] == (
        f"every user's window ends after the data ({sum(rep['units'].values())} left out)")


def test_the_planted_difference_in_returns_is_seen(report: tuple[dict, dict]) -> None:
    rep, _ = report
    for metric in ("came_back_days_2_to_4", "retention_d7"):
        (row,) = [r for r in rep["results"] if r["metric"] == metric]
        assert row["treatment_value"] > row["control_value"]


def test_activity_metrics_are_not_outcomes_clients_post(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert cfg.experiments[0].outcome_names == {"resolved"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("metric", "message"), [
    ({"name": "came_back", "activity": "retention"}, "needs 'day'"),
    ({"name": "retention_d7", "day": 3}, "its day is 7"),
    ({"name": "sessions_per_unit", "day": 3}, "only for retention"),
    ({"name": "active_days", "kind": "binary"}, "kind is 'continuous'"),
    ({"name": "x", "activity": "requests", "session_gap_minutes": 5}, "session_gap_minutes"),
    ({"name": "retention_d1", "window_days": 0}, "greater than 0"),
])
def test_a_wrong_activity_definition_is_refused_naming_the_field(metric: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"experiments": [{"key": "k", "model": "m", "arms": [
            {"name": "a", "weight": 1, "upstream": {"base_url": "http://x/v1", "model": "a"}},
            {"name": "b", "weight": 1, "upstream": {"base_url": "http://x/v1", "model": "b"}}],
            "metrics": [metric]}]}, environ={})

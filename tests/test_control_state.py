"""The control state's ordering rules, the guard's decisions, and the rollout config (no processes)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from splitwatch.service.analyzer.fast_path import FailureMonitor, is_failure
from splitwatch.service.analyzer.guard_policy import Evidence, GuardMemory, decide, next_step, step_index
from splitwatch.service.config import ConfigError, FastRollbackConfig, parse_config
from splitwatch.service.control.channel import FileControl
from splitwatch.service.control.state import StateTable, initial_state, parse_state

ARMS = [{"name": "base", "weight": 50, "upstream": {"base_url": "http://b/v1", "model": "m"}},
        {"name": "ft", "weight": 50, "upstream": {"base_url": "http://f/v1", "model": "m2"}}]


def _exp(**extra):
    cfg = parse_config({"experiments": [{"key": "e", "model": "x", "arms": ARMS, **extra}]}, environ={})
    return cfg.experiments[0]


def test_a_stale_or_repeated_message_never_undoes_a_newer_one() -> None:
    exp = _exp()
    table = StateTable()
    pause = table.change(exp, actor="admin", status="paused", reason="r")
    assert table.apply(pause) and table.effective(exp).status == "paused"
    resume = table.change(exp, actor="admin", status="running", reason="r")
    assert resume.revision > pause.revision and resume.action == "resume" and resume.since == resume.ts
    assert table.apply(resume)
    assert not table.apply(pause)  # delivered again, late: ignored
    assert not table.apply(resume)  # a duplicate: idempotent
    assert table.effective(exp).status == "running"
    # round trip through the wire format keeps everything, including the evidence
    step = table.change(exp, actor="guard", coverage=0.5, reason="step 2", evidence={"units": {"base": 3}})
    again = parse_state(step.to_json())
    assert again == step and again.action == "coverage" and again.since == resume.since


def test_revisions_order_after_what_was_seen_and_after_a_wiped_topic() -> None:
    exp = _exp()
    table = StateTable()
    far_future = table.change(exp, actor="admin", status="paused", reason="r").model_copy(
        update={"revision": time.time_ns() // 1_000_000 + 3_600_000})
    table.apply(far_future)
    assert table.next_revision("e", 1) == far_future.revision + 1  # after the newest seen, whatever the clock
    fresh = StateTable()  # a writer that never saw it (a broker that lost the topic) still orders by time
    assert fresh.next_revision("e", 1) >= time.time_ns() // 1_000_000 - 1000


def test_states_belong_to_a_phase_and_the_config_rules_until_changed() -> None:
    exp1, exp2 = _exp(phase=1, coverage=0.3), _exp(phase=2, rollout={"steps": [0.1, 1.0]})
    table = StateTable()
    assert table.effective(exp1).coverage == 0.3 and table.effective(exp1).revision == 0
    assert table.effective(exp2).coverage == 0.1  # a ramp starts at its first step
    table.apply(table.change(exp1, actor="admin", status="paused", reason="r"))
    assert table.effective(exp1).status == "paused"
    assert table.effective(exp2) == initial_state(exp2)  # a new phase starts clean


def test_the_file_channel_caches_states_and_skips_a_corrupt_cache(tmp_path: Path) -> None:
    exp = _exp()
    a = FileControl(StateTable(), tmp_path)
    a.publish(a.table.change(exp, actor="admin", status="paused", reason="r"))
    b = FileControl(StateTable(), tmp_path)  # another worker, or a restart
    assert b.table.effective(exp).status == "paused" and b.from_cache == 1
    (tmp_path / "control-state.json").write_text("{not json")
    assert FileControl(StateTable(), tmp_path).table.states == {}


def test_rollout_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="steps must increase strictly"):
        _exp(rollout={"steps": [0.5, 0.2]})
    with pytest.raises(ConfigError, match=r"coverage in \(0, 1\]"):
        _exp(rollout={"steps": [0, 1]})
    with pytest.raises(ConfigError, match=r"rollout\.unknown"):
        _exp(rollout={"unknown": 1})
    assert step_index([0.05, 0.25, 1.0], 0.25) == 2 and next_step([0.05, 0.25, 1.0], 0.25) == 1.0
    assert step_index([0.05, 0.25, 1.0], 0.01) == 0 and next_step([0.05, 0.25, 1.0], 1.0) is None


BREACH = {"test": "guardrail", "metric": "escalated", "arm": "ft", "harm": 0.03, "lower": 0.015, "upper": 0.05,
          "margin": 0.01, "relative": False, "alpha": 0.05, "method": "m"}


def _ramping(table: StateTable, exp, coverage: float, minutes_ago: float):
    state = table.change(exp, actor="guard", coverage=coverage, reason="r")
    return state.model_copy(update={"ts": datetime.now(UTC) - timedelta(minutes=minutes_ago)})


def test_the_guard_starts_the_ramp_then_advances_only_when_the_step_is_done() -> None:
    exp = _exp(rollout={"steps": [0.05, 0.5, 1.0], "min_units_per_step": 100, "min_minutes_per_step": 30})
    table, memory, now = StateTable(), GuardMemory(), datetime.now(UTC)
    healthy = Evidence({"base": 200, "ft": 200}, 150)
    start = decide(exp.rollout, table.effective(exp), healthy, now, memory)
    assert start is not None and start.coverage == 0.05 and start.status is None
    assert decide(exp.rollout, _ramping(table, exp, 0.05, 10), healthy, now, memory) is None  # too soon
    assert decide(exp.rollout, _ramping(table, exp, 0.05, 40), Evidence({"base": 50, "ft": 50}, 99), now,
                  memory) is None  # too few units in the step
    step = decide(exp.rollout, _ramping(table, exp, 0.05, 40), healthy, now, memory)
    assert step is not None and step.coverage == 0.5 and step.evidence["step_units"] == 150
    assert decide(exp.rollout, _ramping(table, exp, 1.0, 400), healthy, now, memory) is None  # the last step
    # a breach (even unconfirmed) or a mismatch holds the ramp
    held = Evidence({"base": 200, "ft": 200}, 150, breaches=[BREACH])
    assert decide(exp.rollout, _ramping(table, exp, 0.05, 40), held, now, GuardMemory()) is None


def test_the_guard_rolls_back_after_confirmations_and_leaves_a_pause_alone() -> None:
    exp = _exp(rollout={"confirmations": 2, "min_units_to_act": 100})
    table, now = StateTable(), datetime.now(UTC)
    running = table.effective(exp)
    harm = Evidence({"base": 300, "ft": 300}, 0, breaches=[BREACH])
    memory = GuardMemory()
    assert decide(exp.rollout, running, harm, now, memory) is None and memory.streak == 1
    assert decide(exp.rollout, running, Evidence({"base": 300, "ft": 300}, 0), now, memory) is None
    assert memory.streak == 0  # the breach did not hold: hysteresis restarts
    decide(exp.rollout, running, harm, now, memory)
    action = decide(exp.rollout, running, harm, now, memory)
    assert action is not None and action.status == "paused" and action.rollback == "guardrail"
    assert "escalated breached on ft" in action.reason and action.evidence["confirmations"] == 2
    # too few units: never acts, whatever the test says
    small = Evidence({"base": 99, "ft": 300}, 0, breaches=[BREACH])
    m2 = GuardMemory()
    assert decide(exp.rollout, running, small, now, m2) is None and decide(exp.rollout, running, small, now, m2) is None
    # an arm that gets no units at all is a mismatch the guard acts on once enough units came in total
    srm = Evidence({"base": 200, "ft": 0}, 0, srm={"test": "srm", "method": "arm_counts", "p_value": 0.0,
                                                   "observed": {"base": 200, "ft": 0}, "expected": {}, "arms": ["ft"]})
    m3 = GuardMemory()
    decide(exp.rollout, running, srm, now, m3)
    assert decide(exp.rollout, running, srm, now, m3).rollback == "srm"
    paused = table.change(exp, actor="guard", status="paused", reason="r")
    assert decide(exp.rollout, paused, harm, now, GuardMemory()) is None  # only a person resumes
    off = _exp(rollout={"auto_rollback": False})
    m4 = GuardMemory()
    assert all(decide(off.rollout, running, harm, now, m4) is None for _ in range(5))


def test_the_fast_path_counts_failures_in_its_window_once_each() -> None:
    exp = _exp(rollout={})
    fast = FastRollbackConfig(min_requests=10)
    assert is_failure(500, None) and is_failure(200, "stream_interrupted")
    assert not is_failure(499, "client_disconnected")
    assert not is_failure(429, "http_429")
    t0 = datetime(2026, 11, 27, 12, tzinfo=UTC)
    mon = FailureMonitor(exp, since=t0)

    def response(i: int, arm: str, status: int, ts: datetime = t0) -> dict:
        return {"type": "response", "phase": 1, "arm": arm, "event_id": f"{arm}-{i}", "status_code": status,
                "ts": ts.isoformat().replace("+00:00", "Z")}

    for i in range(40):
        mon.add(response(i, "base", 200))
        mon.add(response(i, "ft", 500 if i % 2 else 200))
        mon.add(response(i, "ft", 500 if i % 2 else 200))  # delivered twice: counted once
        mon.add(response(1000 + i, "ft", 500, ts=t0 - timedelta(seconds=1)))  # before the resume: not counted
    assert (mon.counts["ft"].requests, mon.counts["ft"].failures) == (40, 20)
    breach = mon.breach(fast)
    assert breach is not None and breach["arm"] == "ft" and breach["lower"] > fast.margin
    mon.reset(datetime.now(UTC))
    assert mon.counts["ft"].requests == 0 and mon.breach(fast) is None


def test_the_state_of_an_unchanged_phase_is_its_configs_and_follows_a_reload() -> None:
    table = StateTable()
    first = _exp()
    assert table.effective(first) == initial_state(first)
    assert table.effective(first) is table.effective(first)  # built once per config, not per request
    reloaded = _exp(status="paused")  # a reload builds new config objects
    assert table.effective(reloaded).status == "paused"
    assert table.effective(reloaded) == initial_state(reloaded)
    changed = table.change(reloaded, actor="admin", reason="resume", status="running")
    assert table.apply(changed)
    assert table.effective(reloaded) is changed  # a change through the control channel wins

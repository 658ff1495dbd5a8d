"""The rollout guard, in the analyzer: ramps coverage and rolls back through the control topic.

After each live analysis, :meth:`RolloutGuard.review` applies the rules of :mod:`.guard_policy`; as
batches are ingested, :meth:`RolloutGuard.observe` runs the fast path (:mod:`.fast_path`). Every
action is a new state on the control topic (every proxy worker applies it within a poll), a
``control`` event on the events topic (the report's timeline), a log line, and metrics
(``splitwatch_rollbacks_total``, ``splitwatch_experiment_coverage``/``_paused``). Only experiments
with a ``rollout`` block are acted on; the guard only ever pauses or ramps up, never resumes.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import duckdb

from splitwatch.stats import ExperimentResult, StateInForce
from splitwatch.stats.verdict import CONFIGURED_PAUSE

from .. import metrics
from ..config import AnalyzerConfig, Config, ExperimentConfig
from ..control.channel import Control, ControlUnavailable
from ..control.state import ExperimentState
from ..delivery.kafka_sink import EventOutbox, KafkaSink
from .analysis import analyze_data
from .fast_path import FailureMonitor, decode
from .guard_policy import Evidence, GuardAction, GuardMemory, decide, evidence_from_result, step_index
from .kpi_queries import ExperimentData, load_experiment

log = logging.getLogger(__name__)


def guard_analysis_config(analyzer: AnalyzerConfig, alpha: float) -> AnalyzerConfig:
    """Return the analyzer's settings as the guard analyses with them: its own guardrail level, and always
    the normal mixture. The guard looks at every live analysis, far more often than a group design's
    planned looks, and a group design's level holds only at those (docs/rollout.md)."""
    return analyzer.model_copy(update={"guardrail_alpha": alpha, "sequential": "mixture"})


class RolloutGuard:
    """Reads the state in force from ``control``, and changes it when the rules say so."""

    def __init__(self, cfg: Config, control: Control, sink: KafkaSink | None) -> None:
        self.cfg = cfg
        self.control = control
        self.outbox = None if sink is None else EventOutbox(sink, "control events")
        self.lock = threading.RLock()
        self.memory: dict[str, GuardMemory] = {}
        self.monitors: dict[str, FailureMonitor] = {}
        for exp in cfg.experiments:  # counters start at 0, so that the first rollback is an increase
            for reason in ("guardrail", "srm", "failures"):
                metrics.ROLLBACKS.labels(exp.key, reason)
            for action in ("pause", "resume", "coverage"):
                for actor in ("guard", "admin"):
                    metrics.CONTROL_CHANGES.labels(exp.key, action, actor)

    # -- the state in force ---------------------------------------------------------------------
    def on_apply(self, state: ExperimentState) -> None:
        """A state was read from the control topic: count it, export it, restart the fast path's window."""
        exp = self.cfg.experiment(state.experiment)
        if exp is None or exp.phase != state.phase:
            return
        metrics.CONTROL_CHANGES.labels(exp.key, state.action, state.actor).inc()
        self.export(exp)
        monitor = self.monitors.get(exp.key)
        if monitor is not None and state.since != monitor.since:
            monitor.reset(state.since)

    def state(self, exp: ExperimentConfig) -> ExperimentState:
        """Return the state in force for the experiment's phase."""
        return self.control.table.effective(exp)

    def in_force(self, exp: ExperimentConfig) -> StateInForce | None:
        """Return the state in force as the verdict reads it (None: never changed on the control topic)."""
        st = self.state(exp)
        if st.revision == 0:  # nobody changed it: the config's status
            return CONFIGURED_PAUSE if st.status == "paused" else None
        return StateInForce(st.status, st.actor, st.ts.isoformat(), st.reason, st.changed_by, st.evidence)

    def export(self, exp: ExperimentConfig) -> None:
        """Set the experiment's coverage, paused and rollout-step gauges."""
        st = self.state(exp)
        metrics.GUARD_COVERAGE.labels(exp.key).set(st.coverage)
        metrics.GUARD_PAUSED.labels(exp.key).set(1 if st.status == "paused" else 0)
        if exp.rollout is not None and exp.rollout.steps:
            metrics.ROLLOUT_STEP.labels(exp.key).set(step_index(exp.rollout.steps, st.coverage))

    # -- the slow path: after every live analysis ------------------------------------------------
    def evidence(self, con: duckdb.DuckDBPyConnection, exp: ExperimentConfig, data: ExperimentData,
                 result: ExperimentResult | None) -> Evidence:
        """Return the guard's evidence from the live analysis' tables (``con``), data and result.

        The guard judges units first exposed since the last resume, and splits its level over
        guardrails x treatment arms (Bonferroni), so that an A/A rolls back with probability at
        most ``rollout.alpha`` (docs/rollout.md); it re-analyses only when either differs from the
        live analysis.
        """
        assert exp.rollout is not None
        a = self.cfg.analyzer
        st = self.state(exp)
        tests = sum(1 for m in exp.metrics if m.role == "guardrail") * (len(exp.arms) - 1)
        alpha = (exp.rollout.alpha or a.guardrail_alpha) / max(1, tests)
        if st.since is not None:
            data = load_experiment(con, None, exp, a, start=st.since)
        guard_cfg = guard_analysis_config(a, alpha)
        if st.since is not None or guard_cfg != a:
            result = analyze_data(data, exp, guard_cfg, sequential=True)
        row = con.execute("SELECT count(DISTINCT unit_id) FROM ev WHERE type = 'exposure' "
                          "AND NOT coalesce(forced, false) AND ts >= ?", [st.ts]).fetchone()
        return evidence_from_result(result, {arm: data.units.get(arm, 0) for arm in exp.arm_names},
                                    int(row[0]) if row else 0)

    def review(self, exp: ExperimentConfig, evidence: Evidence | None) -> GuardAction | None:
        """Apply the guard's rules after a live analysis (``evidence`` None: no data yet); return its action."""
        if exp.rollout is None or not self.control.wait_caught_up(0):
            return None  # never act before the control topic was read: the state might be stale
        with self.lock:
            st = self.state(exp)
            memory = self.memory.setdefault(exp.key, GuardMemory())
            ev = evidence or Evidence({a: 0 for a in exp.arm_names}, 0)
            action = decide(exp.rollout, st, ev, datetime.now(UTC), memory)
            if action is not None:
                self._act(exp, st, action)
            return action

    # -- the fast path: after every ingested batch -----------------------------------------------
    def observe(self, values: list[bytes]) -> None:
        """Count the responses of a batch just written to the lake; roll back an arm that clearly fails."""
        active = {e.key: e for e in self.cfg.experiments
                  if e.rollout is not None and e.rollout.auto_rollback and e.rollout.fast_rollback.enabled}
        if not active or not self.control.wait_caught_up(0):
            return
        touched: set[str] = set()
        for raw in values:
            ev = decode(raw)
            if ev is None or ev.get("type") != "response":
                continue
            exp = active.get(str(ev.get("experiment")))
            if exp is None:
                continue
            monitor = self.monitors.get(exp.key)
            if monitor is None:
                monitor = self.monitors[exp.key] = FailureMonitor(exp, self.state(exp).since)
            monitor.add(ev)
            touched.add(exp.key)
        for key in touched:
            exp, monitor = active[key], self.monitors[key]
            assert exp.rollout is not None
            fast = exp.rollout.fast_rollback
            for arm, lower in monitor.bounds(fast).items():
                metrics.GUARD_FAILURE_EXCESS.labels(key, arm).set(lower)
            evidence = monitor.breach(fast)
            if evidence is None:
                continue
            with self.lock:
                st = self.state(exp)
                if st.status == "paused":
                    continue
                t, c = evidence["treatment"], evidence["control"]
                reason = (f"{t['arm']} fails {t['failures']} of {t['requests']} requests ({t['rate']:.1%}) against "
                          f"{c['failures']} of {c['requests']} ({c['rate']:.1%}) for {c['arm']}: the always-valid "
                          f"lower bound of the excess, {evidence['lower']:+.3f}, is above the margin "
                          f"{fast.margin:.3g}")
                self._act(exp, st, GuardAction(reason=reason, status="paused", rollback="failures",
                                               evidence=evidence))

    # -- acting ----------------------------------------------------------------------------------
    def _act(self, exp: ExperimentConfig, st: ExperimentState, action: GuardAction) -> bool:
        """Publish the action as a new state; return True when the control topic took it."""
        new = self.control.table.change(exp, actor="guard", reason=action.reason, status=action.status,
                                        coverage=action.coverage, evidence=action.evidence)
        try:
            self.control.publish(new)
        except ControlUnavailable as exc:
            log.error("guard: could not %s %s (%s); retrying at the next analysis", new.action, exp.key, exc)
            return False
        self.control.apply(new)  # in force here at once: the next look must not act on the old state
        if action.rollback is not None:
            metrics.ROLLBACKS.labels(exp.key, action.rollback).inc()
            log.warning("guard: ROLLBACK of %s phase %d (%s): %s", exp.key, exp.phase, action.rollback,
                        action.reason)
        else:
            log.warning("guard: %s phase %d coverage %.4g -> %.4g: %s", exp.key, exp.phase, st.coverage,
                        new.coverage, action.reason)
        if self.outbox is not None:
            self.outbox.append(new.to_event())
            self.outbox.flush()
        return True

"""The state of an experiment phase (status, coverage; who changed it, why) and the rules that order it.

One message on the control topic is one :class:`ExperimentState`: the whole state after a change,
so that the compacted topic's newest message per experiment is enough to start from. Every reader
(proxy workers, the analyzer) applies messages with the same rule, :meth:`StateTable.apply`:

- a state belongs to an experiment *phase*; a new phase starts from the config;
- a message is applied only if its ``revision`` is higher than the one in force, so a duplicate
  (at-least-once delivery, a replayed cache) or a stale message never undoes a newer change;
- revisions are a hybrid logical clock, ``max(newest seen + 1, now in ms)``: a writer that has seen
  every change orders after them, and a writer that restarted on an emptied topic still orders
  after changes it never saw, as long as clocks agree to better than the time between changes.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import ExperimentConfig
from ..events import ControlEvent

log = logging.getLogger(__name__)

Status = Literal["running", "paused"]
Action = Literal["pause", "resume", "coverage", "shadow"]
Actor = Literal["guard", "admin"]


class ExperimentState(BaseModel):
    """One experiment phase's state after a change: the value of a control-topic message."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: int = Field(1, alias="schema")
    experiment: str
    phase: int = Field(ge=1)
    revision: int = Field(ge=0)
    status: Status
    coverage: float = Field(ge=0, le=1, allow_inf_nan=False)
    action: Action
    actor: Actor
    changed_by: str | None = None
    reason: str
    ts: datetime
    change_id: str
    evidence: dict[str, Any] | None = None
    # the guard judges only units first exposed at or after this (the last resume): a person who
    # resumed a paused experiment is not overruled on the evidence that paused it
    since: datetime | None = None
    # shadow traffic switched at run time (docs/shadow.md): None: as configured; False: off; True: on
    # (only an experiment with a ``shadow`` block has any to switch on)
    shadow: bool | None = None

    def to_json(self) -> bytes:
        """Return the message value (compact JSON; ``shadow`` only when set, so that readers of
        earlier versions still parse every state that does not switch shadow traffic)."""
        return self.model_dump_json(by_alias=True, exclude={"shadow"} if self.shadow is None else None).encode()

    def shadow_enabled(self, exp: ExperimentConfig) -> bool:
        """Return True when this phase mirrors requests now: a ``shadow`` block not switched off."""
        return exp.shadow is not None and self.shadow is not False

    def to_event(self) -> ControlEvent:
        """Return the ``control`` event that records this change on the events topic."""
        arm = (self.evidence or {}).get("arm")
        return ControlEvent(event_id=self.change_id, ts=self.ts, experiment=self.experiment, phase=self.phase,
                            arm=arm if isinstance(arm, str) else None, unit_id=None, action=self.action,
                            status=self.status, coverage=self.coverage, actor=self.actor,
                            changed_by=self.changed_by, reason=self.reason, revision=self.revision,
                            evidence=self.evidence)


def initial_state(exp: ExperimentConfig) -> ExperimentState:
    """Return the state of a phase nobody changed yet: the config's status and initial coverage, revision 0."""
    return ExperimentState(experiment=exp.key, phase=exp.phase, revision=0, status=exp.status,
                           coverage=exp.initial_coverage, action="coverage", actor="admin",
                           changed_by="config", reason="as configured", ts=datetime.fromtimestamp(0, UTC),
                           change_id="config")


def parse_state(raw: bytes | str) -> ExperimentState:
    """Return the state in a control-topic message; raises pydantic.ValidationError when malformed."""
    return ExperimentState.model_validate_json(raw)


class StateTable:
    """The states in force, by (experiment, phase), with the ordering rule of the module docstring."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, int], ExperimentState] = {}
        # initial_state() per experiment config (a frozen model: shared safely). The request path asks for a
        # shadowed experiment's state on each of its control requests; building it cost 2.9 us a time.
        self._initial: dict[tuple[str, int], tuple[ExperimentConfig, ExperimentState]] = {}

    def get(self, key: str, phase: int) -> ExperimentState | None:
        """Return the state of that phase set through the control channel, or None (the config rules)."""
        return self.states.get((key, phase))

    def effective(self, exp: ExperimentConfig) -> ExperimentState:
        """Return the state in force for the experiment's configured phase (the config's when unchanged)."""
        state = self.states.get((exp.key, exp.phase))
        if state is not None:
            return state
        cached = self._initial.get((exp.key, exp.phase))
        if cached is None or cached[0] is not exp:  # a reloaded config is a new object: its own initial state
            cached = self._initial[(exp.key, exp.phase)] = (exp, initial_state(exp))
        return cached[1]

    def apply(self, state: ExperimentState) -> bool:
        """Apply a state if it is newer than the one in force; return True when it was applied."""
        current = self.states.get((state.experiment, state.phase))
        if current is not None and state.revision <= current.revision:
            return False
        self.states[(state.experiment, state.phase)] = state
        return True

    def next_revision(self, key: str, phase: int) -> int:
        """Return the revision a new change of that phase carries (hybrid logical clock)."""
        current = self.states.get((key, phase))
        return max((current.revision + 1) if current else 1, time.time_ns() // 1_000_000)

    def change(self, exp: ExperimentConfig, *, actor: Actor, reason: str, status: Status | None = None,
               coverage: float | None = None, changed_by: str | None = None,
               evidence: dict[str, Any] | None = None, shadow: bool | None = None) -> ExperimentState:
        """Return the state after a change of status, coverage and/or shadow traffic (not applied:
        publish it first)."""
        cur = self.effective(exp)
        now = datetime.now(UTC)
        new_status = status or cur.status
        action: Action = "coverage"
        if new_status != cur.status:
            action = "pause" if new_status == "paused" else "resume"
        elif shadow is not None and coverage is None:
            action = "shadow"
        return ExperimentState(
            experiment=exp.key, phase=exp.phase, revision=self.next_revision(exp.key, exp.phase),
            status=new_status, coverage=cur.coverage if coverage is None else coverage, action=action,
            actor=actor, changed_by=changed_by, reason=reason, ts=now,
            change_id=str(uuid.uuid4()), evidence=evidence,
            since=now if action == "resume" else cur.since, shadow=cur.shadow if shadow is None else shadow)

    # -- the file cache ---------------------------------------------------------------------------
    def load(self, path: Path) -> int:
        """Apply the states cached in ``path`` (missing file: none); return how many were newer."""
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.error("cannot read the control-state cache %s: %s", path, exc)
            return 0
        applied = 0
        for item in raw if isinstance(raw, list) else []:
            try:
                applied += self.apply(ExperimentState.model_validate(item))
            except ValueError as exc:
                log.error("ignoring an invalid state in %s: %s", path, exc)
        return applied

    def save(self, path: Path) -> None:
        """Write every state to ``path`` atomically (write a temporary file, then rename it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps([s.model_dump(mode="json", by_alias=True) for s in self.states.values()],
                                  indent=1))
        os.replace(tmp, path)

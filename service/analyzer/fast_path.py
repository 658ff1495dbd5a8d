"""The guard's fast path: request failures of each arm, counted as response events arrive.

A candidate that answers 5xx, or breaks its streams, far more often than the control must not wait
for the next live analysis (``analyzer.interval_s``). The ingester hands every batch it wrote to the
lake to :class:`FailureMonitor` (at most ``analyzer.batch_max_seconds`` after the events reached
Kafka); each batch updates per-arm counts of requests and failures since the last start or resume
and re-runs an always-valid test (docs/rollout.md, "The fast path"):

    roll back when the one-sided (1 - alpha/k) lower bound of p_arm - p_control exceeds ``margin``

with Agresti-Caffo-adjusted proportions in Howard et al.'s normal-mixture confidence sequence
(:func:`splitwatch.stats.guardrails.rate_excess_lower_bound`), k the number of treatment arms.
Under "the arm fails at most ``margin`` more often than the control", the chance that this ever
fires, at however many looks, is at most alpha. Requests of one unit are counted as independent:
the fast path judges the endpoint's health, not the users' experience.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from splitwatch.stats.errors import InvalidStatistics
from splitwatch.stats.guardrails import rate_excess_lower_bound

from ..config import ExperimentConfig, FastRollbackConfig

# Response errors that mean the endpoint failed (a client that left, or a 4xx, is not the endpoint's failure)
FAILURE_ERRORS = frozenset({"stream_interrupted", "body_interrupted", "protocol_error", "timeout", "connect_error"})
N_STAR = 1_000  # the mixture is tuned to be tightest around 1,000 requests: a failing endpoint shows early
SEEN_IDS = 100_000


def is_failure(status_code: int | None, error: str | None) -> bool:
    """Return True when a response event records a failure of the endpoint (5xx, broken stream, timeout)."""
    return (status_code is not None and status_code >= 500) or error in FAILURE_ERRORS


@dataclass
class ArmCounts:
    """Requests and failures of one arm in the current window."""

    requests: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Return the counts and the failure rate."""
        rate = self.failures / self.requests if self.requests else None
        return {"requests": self.requests, "failures": self.failures, "rate": rate}


class FailureMonitor:
    """Counts the requests and failures of one experiment phase's arms since ``since``."""

    def __init__(self, exp: ExperimentConfig, since: datetime | None) -> None:
        self.exp = exp
        self.arms = [a.name for a in exp.arms]
        self.reset(since)

    def reset(self, since: datetime | None) -> None:
        """Start a new window (a resume): only responses at or after ``since`` count."""
        self.since = since
        self.counts = {a: ArmCounts() for a in self.arms}
        self._seen: OrderedDict[str, None] = OrderedDict()

    def add(self, ev: dict[str, Any]) -> None:
        """Count one decoded event if it is an unforced response of this phase in the window."""
        if (ev.get("type") != "response" or ev.get("phase") != self.exp.phase or ev.get("forced")
                or ev.get("arm") not in self.counts):
            return
        if self.since is not None:
            try:
                if datetime.fromisoformat(str(ev.get("ts")).replace("Z", "+00:00")) < self.since:
                    return
            except ValueError:
                return
        event_id = str(ev.get("event_id"))
        if event_id in self._seen:
            return  # delivery is at least once
        self._seen[event_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        c = self.counts[ev["arm"]]
        c.requests += 1
        c.failures += is_failure(ev.get("status_code"), ev.get("error"))

    def bounds(self, fast: FastRollbackConfig) -> dict[str, float]:
        """Return, per treatment arm with enough requests, the lower bound of its failure-rate excess."""
        control = self.counts[self.arms[0]]
        treatments = self.arms[1:]
        out: dict[str, float] = {}
        if control.requests < fast.min_requests:
            return out
        for arm in treatments:
            c = self.counts[arm]
            if c.requests < fast.min_requests:
                continue
            try:
                out[arm] = rate_excess_lower_bound(control.failures, control.requests, c.failures, c.requests,
                                                   fast.alpha / len(treatments), N_STAR)
            except InvalidStatistics:
                continue
        return out

    def breach(self, fast: FastRollbackConfig) -> dict[str, Any] | None:
        """Return the evidence of the worst arm whose failures exceed the control's by more than the margin."""
        over = {a: lb for a, lb in self.bounds(fast).items() if lb > fast.margin}
        if not over:
            return None
        arm = max(over, key=lambda a: over[a])
        control = self.arms[0]
        return {"test": "failures", "arm": arm, "lower": over[arm], "margin": fast.margin,
                "alpha": fast.alpha / (len(self.arms) - 1),
                "method": f"agresti_caffo_msprt_one_sided(n_star={N_STAR})",
                "control": {"arm": control, **self.counts[control].as_dict()},
                "treatment": {"arm": arm, **self.counts[arm].as_dict()},
                "since": self.since.isoformat() if self.since else None}


def decode(raw: bytes) -> dict[str, Any] | None:
    """Return a message decoded as a JSON object, or None."""
    try:
        ev = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return ev if isinstance(ev, dict) else None

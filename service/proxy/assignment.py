"""Deterministic, sticky assignment of experiment units to arms.

The rule is a contract (docs/assignment.md) that analysts recompute in SQL::

    bucket = int.from_bytes(sha256(f"{salt}:{unit_id}".encode()).digest()[:8], "big") % 10000

Arms own contiguous bucket ranges in config order, sized by weight. ``coverage``
admits a unit only when its bucket lies in the first ``coverage`` share of its
arm's range, so raising coverage never moves a unit between arms.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from ..config import Config, ExperimentConfig, HoldoutConfig

BUCKETS = 10_000

ExclusionReason = Literal["no_unit", "not_covered", "paused", "forced", "holdout"]


def bucket_of(salt: str, unit_id: str) -> int:
    """Return the unit's bucket in [0, 10000) for this salt."""
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class ArmRange:
    """Buckets [start, end) owned by one arm."""

    name: str
    start: int
    end: int

    def admits(self, bucket: int, coverage: float) -> bool:
        """Return True when ``bucket`` lies in the first ``coverage`` share of this range."""
        return (bucket - self.start) < coverage * (self.end - self.start)


def arm_ranges(experiment: ExperimentConfig) -> tuple[ArmRange, ...]:
    """Return the contiguous bucket range of each arm, in config order, proportional to weight."""
    # Exact rational arithmetic so that the boundaries are the documented
    # floor(10000 * cumulative_weight / total_weight + 1/2), free of float rounding.
    weights = [Fraction(a.weight) for a in experiment.arms]
    total = sum(weights)
    ranges = []
    cumulative = Fraction(0)
    start = 0
    for arm, weight in zip(experiment.arms, weights, strict=True):
        cumulative += weight
        end = math.floor(cumulative * BUCKETS / total + Fraction(1, 2))
        ranges.append(ArmRange(arm.name, start, end))
        start = end
    return tuple(ranges)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where one request goes and whether it counts for the experiment."""

    experiment: str
    phase: int
    arm: str
    bucket: int | None
    in_experiment: bool
    forced: bool = False
    excluded_reason: ExclusionReason | None = None
    holdout: bool = False  # kept on the control by the long-term holdout (logged, not in the experiment)

    @property
    def logged(self) -> bool:
        """Return True when the request produces exposure and response events (in experiment, forced, or
        held out: the holdout's users are measured too)."""
        return self.in_experiment or self.forced or self.holdout


class CompiledExperiment:
    """An experiment with its bucket ranges precomputed for the request path."""

    __slots__ = ("config", "ranges", "salt")

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.ranges = arm_ranges(config)
        self.salt = config.effective_salt

    def bucketed_arm(self, unit_id: str) -> tuple[int, ArmRange]:
        """Return the unit's bucket and the arm range that owns it (ignoring coverage and pause)."""
        b = bucket_of(self.salt, unit_id)
        for r in self.ranges:
            if b < r.end:
                return b, r
        raise AssertionError("bucket ranges do not cover [0, 10000)")  # pragma: no cover

    def assign(self, unit_id: str | None, forced_arm: str | None = None, paused: bool | None = None,
               coverage: float | None = None, holdout: Holdout | None = None) -> Assignment:
        """Return the assignment of ``unit_id``; ``paused``/``coverage`` override the config (admin). A unit
        the experiment would take that ``holdout`` holds gets the control, flagged (docs/holdout.md)."""
        cfg = self.config
        control = cfg.arms[0].name
        if forced_arm is not None:
            return Assignment(cfg.key, cfg.phase, forced_arm, None, False, True, "forced")
        if not unit_id:
            return Assignment(cfg.key, cfg.phase, control, None, False, False, "no_unit")
        b, r = self.bucketed_arm(unit_id)
        is_paused = (cfg.status == "paused") if paused is None else paused
        if is_paused:
            return Assignment(cfg.key, cfg.phase, control, b, False, False, "paused")
        cov = cfg.coverage if coverage is None else coverage
        if not r.admits(b, cov):
            return Assignment(cfg.key, cfg.phase, control, b, False, False, "not_covered")
        if holdout is not None and holdout.holds(unit_id):
            return Assignment(cfg.key, cfg.phase, control, b, False, False, "holdout", holdout=True)
        return Assignment(cfg.key, cfg.phase, r.name, b, True)


class Holdout:
    """The long-term holdout on the request path: its own salt's buckets below ``share``, while it holds.

    Applied after coverage, to the units an experiment would take, so that the holdout's share of the
    logged units is ``share`` whatever the coverage (the report's SRM check of the holdout reads that).
    """

    __slots__ = ("end", "limit", "salt", "start")

    def __init__(self, config: HoldoutConfig) -> None:
        self.salt = config.salt
        self.limit = config.share * BUCKETS
        self.start, self.end = config.start.timestamp(), config.end.timestamp()

    def holds(self, unit_id: str, now: float | None = None) -> bool:
        """Return True when the unit is in the holdout and the holdout is in force ``now`` (epoch seconds)."""
        t = time.time() if now is None else now
        return self.start <= t < self.end and bucket_of(self.salt, unit_id) < self.limit


class ExperimentTable:
    """Look-up of running experiments by requested model name and by key, and the holdout in force."""

    def __init__(self, config: Config) -> None:
        self.by_key = {e.key: CompiledExperiment(e) for e in config.experiments}
        self.by_model = {c.config.model: c for c in self.by_key.values()}
        self.holdout = Holdout(config.holdout) if config.holdout is not None else None

    def for_model(self, model: str) -> CompiledExperiment | None:
        """Return the experiment that matches a requested model name, or None."""
        return self.by_model.get(model)

"""The errors of the statistics engine."""

from __future__ import annotations


class StatsError(ValueError):
    """Base class: the engine cannot compute what was asked."""


class InvalidStatistics(StatsError):
    """The sufficient statistics are impossible or too few (negative n, variance < 0, n = 0, ...)."""


class InvalidSpecification(StatsError):
    """The analysis was asked for something inconsistent (unknown arm, metric kind, alpha ...)."""

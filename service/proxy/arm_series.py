"""The request path's metric series of one (experiment, arm), looked up once instead of on every request.

prometheus-client's ``labels()`` checks and joins its label values and takes a lock on every call; the
request path made four or five such calls per request for the same few label sets. :func:`arm_series`
keeps each (experiment, arm)'s children; the label sets are the config's experiments and arms (and the
unassigned arm), so the cache stays as small as the series themselves.
"""

from __future__ import annotations

from typing import Any

from .. import metrics


class ArmSeries:
    """One (experiment, arm)'s children of the request metrics (``splitwatch_requests`` by status on demand)."""

    __slots__ = ("arm", "completion_tokens", "duration", "experiment", "prompt_tokens", "statuses", "ttft")

    def __init__(self, experiment: str, arm: str) -> None:
        self.experiment, self.arm = experiment, arm
        self.duration = metrics.REQUEST_DURATION.labels(experiment, arm)
        self.ttft = metrics.TIME_TO_FIRST_TOKEN.labels(experiment, arm)
        self.prompt_tokens = metrics.TOKENS.labels(experiment, arm, "prompt")
        self.completion_tokens = metrics.TOKENS.labels(experiment, arm, "completion")
        self.statuses: dict[int, Any] = {}

    def requests(self, status: int) -> Any:
        """Return the ``splitwatch_requests`` child of this arm for an HTTP status."""
        child = self.statuses.get(status)
        if child is None:
            child = self.statuses[status] = metrics.REQUESTS.labels(self.experiment, self.arm, str(status))
        return child


_SERIES: dict[tuple[str, str], ArmSeries] = {}


def arm_series(experiment: str, arm: str) -> ArmSeries:
    """Return the (cached) request metric children of ``arm`` in ``experiment``."""
    series = _SERIES.get((experiment, arm))
    if series is None:
        series = _SERIES[(experiment, arm)] = ArmSeries(experiment, arm)
    return series

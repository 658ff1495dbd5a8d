"""The built-in metrics: KPIs the analyzer computes from response events for every experiment, each
defined once here (kind, direction, description, and the SQL of its per-request value).

They are ``diagnostic`` unless named in an experiment's ``metrics:`` (design, "Metric roles and the
verdict"), where a name and a role (and a margin) are enough: the kind and direction come from here.
The SQL is text only (this module is imported by the proxy's config, which runs no query); the
analyzer's queries (``analyzer.metric_statements``) read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_LATENCY = re.compile(r"latency_p(\d{1,2})_ms")
_RETENTION = re.compile(r"retention_d([1-9]\d{0,2})")


@dataclass(frozen=True)
class PerRequestMetric:
    """A built-in ratio over requests: per unit, the sum of ``value_sql`` over its responses within the
    attribution window, over its number of such responses (delta method over units).

    ``value_sql`` is an expression over one row of the response table ``r`` (``status_code``,
    ``error``, ``prompt_tokens``, ``completion_tokens``, ``upstream_model``) and the price table ``p``
    (``p_in``, ``p_out`` per 1,000 tokens, joined on the upstream model).
    """

    name: str
    description: str  # the config's description of the metric
    what: str  # what is counted per request, for the report's definition
    value_sql: str
    needs_prices: bool = False
    direction: str = "decrease"

    def defaults(self) -> dict[str, Any]:
        """Return the metric's definition fields (a config naming it gets these)."""
        return {"kind": "ratio", "direction": self.direction, "description": self.description}


PER_REQUEST: dict[str, PerRequestMetric] = {m.name: m for m in (
    PerRequestMetric("error_rate", "5xx answers and broken streams per request", "5xx answers and broken streams",
                     "CASE WHEN r.status_code >= 500 OR r.error = 'stream_interrupted' THEN 1 ELSE 0 END"),
    PerRequestMetric("completion_tokens_per_request", "completion tokens per request", "completion tokens",
                     "coalesce(r.completion_tokens, 0)"),
    PerRequestMetric("cost_per_request", "price of prompt and completion tokens per request (analyzer.prices)",
                     "token cost (analyzer.prices)",
                     "coalesce(r.prompt_tokens, 0) / 1000.0 * p.p_in + coalesce(r.completion_tokens, 0) / 1000.0 "
                     "* p.p_out", needs_prices=True),
)}

LATENCY_OK_SQL = "status_code = 200 AND latency_ms IS NOT NULL"
"""The responses whose latency the latency quantiles (``latency_pNN_ms``) are computed from."""


ACTIVITY: dict[str, tuple[str, str]] = {
    "requests_per_unit": ("requests", "requests per user within the attribution window"),
    "active_days": ("active_days", "days with a request within the attribution window, per user"),
    "sessions_per_unit": ("sessions", "sessions per user within the attribution window (a pause of "
                                      "session_gap_minutes, default 30, starts a new one)"),
    "turns_per_session": ("turns_per_session", "conversation length: the most user turns a request of the session "
                                               "carried, per session"),
}
"""Activity built-ins by name: their ``activity`` and description. ``retention_dN`` (N = 1..999) is the
day-N retention. Computed from the unit's own requests (exposures), only when an experiment names them
(docs/analyzer.md, "Activity metrics")."""


def latency_metric_name(quantile: float) -> str:
    """Return the built-in latency quantile's name: ``latency_p95_ms`` for 0.95."""
    return f"latency_p{round(quantile * 100):d}_ms"


def builtin_defaults(name: str) -> dict[str, Any] | None:
    """Return the definition fields of the built-in metric called ``name``, or None if it is not one."""
    m = _LATENCY.fullmatch(name)
    if m is not None and 0 < int(m.group(1)) < 100:
        q = int(m.group(1))
        return {"kind": "quantile", "quantile": q / 100, "direction": "decrease",
                "description": f"p{q} upstream latency of successful responses, ms"}
    if name in PER_REQUEST:
        return PER_REQUEST[name].defaults()
    return activity_defaults(name)


def activity_defaults(name: str) -> dict[str, Any] | None:
    """Return the definition fields of the activity built-in called ``name`` (``retention_dN``,
    ``requests_per_unit``, ...), or None if it is not one."""
    m = _RETENTION.fullmatch(name)
    if m is not None:
        day = int(m.group(1))
        return {"activity": "retention", "day": day, "kind": "binary", "direction": "increase",
                "description": f"day-{day} retention: the user made a request on day {day} after the first "
                               "exposure (or within window_days from it)"}
    if name in ACTIVITY:
        activity, description = ACTIVITY[name]
        kind = "ratio" if activity == "turns_per_session" else "continuous"
        return {"activity": activity, "kind": kind, "direction": "increase", "description": description}
    return None


def is_latency_quantile(name: str) -> bool:
    """Return True for a built-in latency quantile's name (``latency_pNN_ms``)."""
    m = _LATENCY.fullmatch(name)
    return m is not None and 0 < int(m.group(1)) < 100


def complete_builtin(metric: Any) -> Any:
    """Return a config metric (a mapping) with a built-in's kind, direction and quantile (an activity's
    activity and day) filled in.

    A field the config sets must agree with the built-in's (a built-in's SQL is fixed); the
    description may be replaced, and an activity's direction and window.
    """
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        return metric
    defaults = builtin_defaults(metric["name"])
    if defaults is None:
        return metric
    # an activity's direction is the experiment's to say (longer conversations: better or worse?)
    fixed = ("kind", "activity", "day") if "activity" in defaults else ("kind", "quantile", "direction")
    for key in fixed:
        if key in metric and key in defaults and metric[key] != defaults[key]:
            raise ValueError(f"metric {metric['name']!r} is a built-in: its {key} is {defaults[key]!r}, "
                             f"not {metric[key]!r}")
    return {**defaults, **metric}

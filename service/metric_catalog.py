"""The built-in metrics: KPIs the analyzer computes from response events for every experiment.

They are ``diagnostic`` unless named in an experiment's ``metrics:`` (design, "Metric roles and the
verdict"), where a name and a role (and a margin) are enough: the kind and direction come from here.
"""

from __future__ import annotations

import re
from typing import Any

_LATENCY = re.compile(r"latency_p(\d{1,2})_ms")
_RATIOS: dict[str, str] = {
    "error_rate": "5xx answers and broken streams per request",
    "completion_tokens_per_request": "completion tokens per request",
    "cost_per_request": "price of prompt and completion tokens per request (analyzer.prices)",
}


def builtin_defaults(name: str) -> dict[str, Any] | None:
    """Return the definition fields of the built-in metric called ``name``, or None if it is not one."""
    m = _LATENCY.fullmatch(name)
    if m is not None and 0 < int(m.group(1)) < 100:
        q = int(m.group(1))
        return {"kind": "quantile", "quantile": q / 100, "direction": "decrease",
                "description": f"p{q} upstream latency of successful responses, ms"}
    if name in _RATIOS:
        return {"kind": "ratio", "direction": "decrease", "description": _RATIOS[name]}
    return None


def complete_builtin(metric: Any) -> Any:
    """Return a config metric (a mapping) with a built-in's kind, direction and quantile filled in.

    A field the config sets must agree with the built-in's (a built-in's SQL is fixed); the
    description may be replaced.
    """
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        return metric
    defaults = builtin_defaults(metric["name"])
    if defaults is None:
        return metric
    for key in ("kind", "quantile", "direction"):
        if key in metric and key in defaults and metric[key] != defaults[key]:
            raise ValueError(f"metric {metric['name']!r} is a built-in: its {key} is {defaults[key]!r}, "
                             f"not {metric[key]!r}")
    return {**defaults, **metric}

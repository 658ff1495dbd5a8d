"""A small client of Prometheus' HTTP API: the range queries the report's Serving section needs.

httpx directly rather than a Prometheus client library: one endpoint (``/api/v1/query_range``) and its
documented JSON are all that is used, and the errors must name the URL and the query.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime

import httpx

from ..config import PrometheusConfig

MAX_POINTS = 10_000  # Prometheus refuses a range query of more than 11,000 points per series


class PrometheusUnavailable(Exception):
    """Prometheus could not be reached or refused the query; the message says which and why."""


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range query: its labels and its (unix time, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


def step_for(cfg: PrometheusConfig, start: datetime, end: datetime) -> float:
    """Return the query step in seconds: the configured one, raised to keep each series under 10,000 points."""
    return max(cfg.step_s, math.ceil((end - start).total_seconds() / MAX_POINTS))


def query_range(cfg: PrometheusConfig, expr: str, start: datetime, end: datetime,
                client: httpx.Client | None = None) -> list[RangeSeries]:
    """Return the series of ``expr`` between ``start`` and ``end``; raise PrometheusUnavailable on failure."""
    headers = {}
    if cfg.bearer_token_env:
        token = os.environ.get(cfg.bearer_token_env)
        if not token:
            raise PrometheusUnavailable(f"analyzer.prometheus.bearer_token_env: ${cfg.bearer_token_env} is not set")
        headers["authorization"] = f"Bearer {token}"
    params = {"query": expr, "start": f"{start.timestamp():.3f}", "end": f"{end.timestamp():.3f}",
              "step": f"{step_for(cfg, start, end):g}"}
    url = f"{cfg.url}/api/v1/query_range"
    try:
        if client is None:
            resp = httpx.get(url, params=params, headers=headers, timeout=cfg.timeout_s)
        else:
            resp = client.get(url, params=params, headers=headers, timeout=cfg.timeout_s)
        body = resp.json()
    except httpx.HTTPError as exc:
        raise PrometheusUnavailable(f"Prometheus at {cfg.url} is unreachable ({type(exc).__name__}: {exc})") from exc
    except ValueError as exc:
        raise PrometheusUnavailable(f"Prometheus at {cfg.url} answered HTTP {resp.status_code} without JSON") from exc
    if resp.status_code != 200 or body.get("status") != "success":
        raise PrometheusUnavailable(f"Prometheus at {cfg.url} refused the query (HTTP {resp.status_code}, "
                                    f"{body.get('errorType')}: {body.get('error')})")
    return [RangeSeries(dict(s.get("metric", {})), [(float(t), float(v)) for t, v in s.get("values", [])])
            for s in body["data"]["result"]]

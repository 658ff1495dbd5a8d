"""Activity metrics: per-unit values read from the unit's own requests (its non-forced exposures), with no
outcome posted by a client (docs/analyzer.md, "Activity metrics").

Each function returns CTEs ending in ``pu`` (unit_id, arm, grp, ``y``, a ratio's ``d``, ``cap``), the shape
:func:`.metric_statements.unit_values` returns for outcome metrics, so the same statements sum them. They
read ``units`` (the period's units), ``expo_all`` (every non-forced exposure of the phase's units, its
offset from the unit's first exposure in microseconds, whether it falls in the attribution window, and
the request's user turns) and ``horizon``
(the last instant the data covers), all built by :mod:`.kpi_queries`.

Times are compared in whole microseconds since the unit's first exposure, the lake's resolution, so
DuckDB and Spark draw every boundary at the same instant.
"""

from __future__ import annotations

from collections.abc import Callable

from splitwatch.stats import MetricDefinition

DAY_US = 86_400_000_000


def _us(days: float) -> int:
    return round(days * DAY_US)


def retention_bounds(m: MetricDefinition) -> tuple[int, int]:
    """Return a retention metric's window [lo, hi) in microseconds after the unit's first exposure."""
    day = m.day or 0
    return _us(day), _us(day + m.retention_window_days)


def censored_sql(m: MetricDefinition) -> str:
    """Return a statement counting the period's units whose retention window ends after the data's horizon
    (left out of the metric, since whether they came back is not known yet)."""
    _, hi = retention_bounds(m)
    return f"SELECT count(*) FROM units u, horizon hz WHERE epoch_us(u.first_ts) + {hi} > hz.h"


def activity_definition(m: MetricDefinition, window: str) -> str:
    """Return what an activity metric's value is, unit by unit (the report's vocabulary); ``window`` is the
    attribution window as the report writes it."""
    if m.activity == "retention":
        w = m.retention_window_days
        span = f"on day {m.day}" if w == 1 else f"within {w:g} days from day {m.day}"
        return (f"per user: 1 if the user made a request {span} after the first exposure (days are 24 h from "
                "it), else 0; users whose window ends after the data are left out (censored)")
    gap = f"{m.session_gap_s / 60:g} min"
    return {
        "requests": f"per user: requests within {window} of the first exposure",
        "active_days": f"per user: days (24 h from the first exposure) with a request within {window}",
        "sessions": f"per user: sessions within {window} of the first exposure (a pause over {gap} starts one)",
        "turns_per_session": (f"per session: the most user turns any request of the session carried, over all "
                              f"the arm's users' sessions within {window} (a pause over {gap} starts one; "
                              "delta method over users)"),
    }[m.activity or ""]


def activity_values(m: MetricDefinition, grp: str | None,
                    cap_sql: Callable[[MetricDefinition, str, str], str]) -> tuple[str, list[str]]:
    """Return the CTEs ending in ``pu`` of an activity metric and its value columns (``y``; a ratio's ``d``).

    Requests, active days, sessions and turns count the unit's requests within the attribution window
    (``expo_all.in_window``); retention looks at its own window, however far. ``grp`` is the grouping
    column's expression (``u.day``, ``u.seg``) or None. ``cap_sql`` builds
    the cap's one-row SELECT (:func:`.metric_statements.cap_sql`).
    """
    day, by = (grp, f", {grp}") if grp else ("0", "")
    if m.activity == "retention":
        lo, hi = retention_bounds(m)
        # 1 when a request falls in [day N, day N + window) after the first exposure; a unit whose window
        # ends after the horizon is left out (counted by censored_sql)
        return f"""pu AS (SELECT u.unit_id, u.arm, {day} AS grp,
                          CASE WHEN count(x.unit_id) > 0 THEN 1.0 ELSE 0.0 END AS y, CAST(NULL AS DOUBLE) AS cap
                   FROM units u CROSS JOIN horizon hz
                   LEFT JOIN expo_all x ON x.unit_id = u.unit_id AND x.since_us >= {lo} AND x.since_us < {hi}
                   WHERE epoch_us(u.first_ts) + {hi} <= hz.h
                   GROUP BY u.unit_id, u.arm{by})""", ["y"]
    if m.activity == "requests":
        raw = f"SELECT u.unit_id, u.arm, {day} AS grp, CAST(u.requests AS DOUBLE) AS v FROM units u"
    elif m.activity == "active_days":
        raw = f"""SELECT u.unit_id, u.arm, {day} AS grp,
                         CAST(count(DISTINCT CAST(floor(x.since_us / {DAY_US}) AS BIGINT)) AS DOUBLE) AS v
                  FROM units u JOIN expo_all x ON x.unit_id = u.unit_id AND x.in_window
                  GROUP BY u.unit_id, u.arm{by}"""
    elif m.activity == "sessions":
        return f"""{_sessions(m)},
               raw AS (SELECT u.unit_id, u.arm, {day} AS grp, CAST(sum(g.starts) AS DOUBLE) AS v
                       FROM units u JOIN g ON g.unit_id = u.unit_id GROUP BY u.unit_id, u.arm{by}),
               {_capped(m, cap_sql)}""", ["y"]
    elif m.activity == "turns_per_session":
        return f"""{_sessions(m)},
               s AS (SELECT unit_id, turns, sum(starts) OVER (PARTITION BY unit_id ORDER BY since_us, event_id
                                                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session
                     FROM g),
               t AS (SELECT unit_id, session, max(turns) AS turns FROM s GROUP BY unit_id, session),
               raw AS (SELECT u.unit_id, u.arm, {day} AS grp, CAST(sum(t.turns) AS DOUBLE) AS num,
                              CAST(count(*) AS DOUBLE) AS den
                       FROM units u JOIN t ON t.unit_id = u.unit_id GROUP BY u.unit_id, u.arm{by}),
               c AS ({cap_sql(m, "num", "raw")}),
               pu AS (SELECT unit_id, arm, grp, CASE WHEN c.cap IS NULL THEN num ELSE least(num, c.cap) END AS y,
                             den AS d, c.cap FROM raw, c)""", ["y", "d"]
    else:
        raise ValueError(f"unknown activity {m.activity!r} of metric {m.name!r}")
    return f"raw AS ({raw}), {_capped(m, cap_sql)}", ["y"]


def _capped(m: MetricDefinition, cap_sql: Callable[[MetricDefinition, str, str], str]) -> str:
    """Return the CTEs ``c`` and ``pu``: the per-unit value ``v`` of ``raw``, capped."""
    return f"""c AS ({cap_sql(m, "v", "raw")}),
               pu AS (SELECT unit_id, arm, grp, CASE WHEN c.cap IS NULL THEN v ELSE least(v, c.cap) END AS y, c.cap
                      FROM raw, c)"""


def _sessions(m: MetricDefinition) -> str:
    """Return the CTE ``g``: the units' requests within the window, ``starts`` = 1 where a session starts
    (the unit's first request, or one more than the gap after the one before)."""
    gap = round(m.session_gap_s * 1_000_000)
    return f"""g AS (SELECT x.unit_id, x.since_us, x.event_id, coalesce(x.user_turns, 1.0) AS turns,
                      CASE WHEN x.since_us - lag(x.since_us) OVER (PARTITION BY x.unit_id
                                                                   ORDER BY x.since_us, x.event_id) <= {gap}
                           THEN 0 ELSE 1 END AS starts
               FROM expo_all x SEMI JOIN units u ON u.unit_id = x.unit_id WHERE x.in_window)"""

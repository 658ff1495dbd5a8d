"""The definition of a KPI: one contract, used by the config file and by the statistics engine."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MetricKind = Literal["binary", "continuous", "ratio", "quantile"]
MetricRole = Literal["primary", "secondary", "guardrail", "diagnostic"]
ROLES: tuple[MetricRole, ...] = ("primary", "secondary", "guardrail", "diagnostic")
Activity = Literal["retention", "requests", "active_days", "sessions", "turns_per_session"]
ACTIVITY_KINDS: dict[str, MetricKind] = {"retention": "binary", "requests": "continuous", "active_days": "continuous",
                                         "sessions": "continuous", "turns_per_session": "ratio"}
"""The kind of each activity metric (computed from a unit's exposures, docs/analyzer.md)."""
DEFAULT_RETENTION_WINDOW_DAYS = 1.0
DEFAULT_SESSION_GAP_MINUTES = 30.0


class MetricCap(BaseModel):
    """Winsorisation of per-unit values before they are summed: at a quantile of all units, or a value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantile: float | None = Field(None, ge=0.5, lt=1)  # e.g. 0.99: the value at the 99th percentile of all units
    value: float | None = None

    @model_validator(mode="after")
    def _one(self) -> MetricCap:
        if (self.quantile is None) == (self.value is None):
            raise ValueError("a cap needs exactly one of 'quantile' (e.g. 0.99) or 'value'")
        return self


class MetricDefinition(BaseModel):
    """A metric of an experiment: what it measures, which way is better, and its role in the verdict.

    Roles (design, "Metric roles and the verdict"): ``primary`` decides the verdict; ``secondary``
    (the default) is reported with its own correction; ``guardrail`` is a non-inferiority test against
    ``margin``; ``diagnostic`` is shown only. ``guardrail: true`` is read as ``role: guardrail``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    kind: MetricKind
    direction: Literal["increase", "decrease"] = "increase"
    role: MetricRole = "secondary"
    margin: float | None = Field(None, ge=0)  # guardrails: the harm accepted (0: none)
    relative_margin: bool = False  # margin as a share of the control's value (0.05 = 5%) instead of absolute
    # the effect the experiment is planned to detect (absolute, in the metric's units): the verdict's
    # "days to reach power" is computed for it; absent, for the effect observed so far
    mde: float | None = Field(None, gt=0)
    quantile: float | None = Field(None, gt=0, lt=1)  # for kind "quantile", e.g. 0.95
    # for kind "ratio" over outcomes: per unit, sum of the numerator outcome / the denominator
    # ("requests", or another outcome metric's sum)
    numerator: str | None = None
    denominator: str | None = None
    description: str | None = None
    # continuous metrics: each unit's value, ratio metrics: each unit's numerator, capped before summing
    cap: MetricCap | None = None
    # activity metrics, read from the unit's own requests (exposures) instead of posted outcomes: day-N
    # retention (``day``, ``window_days``), requests, active days, sessions and turns per session
    # (``session_gap_minutes``); the kind follows from the activity
    activity: Activity | None = None
    day: int | None = Field(None, ge=1, le=366)  # retention: the unit made a request on day N after its first
    window_days: float | None = Field(None, gt=0, le=366)  # retention: ... or within this many days from day N
    session_gap_minutes: float | None = Field(None, gt=0, le=7 * 24 * 60)  # a longer pause starts a new session

    @model_validator(mode="before")
    @classmethod
    def _activity_kind(cls, data: Any) -> Any:
        """An activity metric's kind follows from its activity (a kind given must agree)."""
        if isinstance(data, dict) and data.get("activity") in ACTIVITY_KINDS:
            kind = ACTIVITY_KINDS[data["activity"]]
            if data.get("kind", kind) != kind:
                raise ValueError(f"an activity metric of activity {data['activity']!r} is of kind {kind!r}, "
                                 f"not {data['kind']!r}")
            data = {**data, "kind": kind}
        return data

    @model_validator(mode="before")
    @classmethod
    def _guardrail_flag(cls, data: Any) -> Any:
        """Read the older ``guardrail: true`` as ``role: guardrail`` (and refuse a contradiction)."""
        if isinstance(data, dict) and "guardrail" in data:
            data = dict(data)
            flag = data.pop("guardrail")
            if not isinstance(flag, bool):
                raise ValueError("'guardrail' must be true or false (prefer 'role: guardrail')")
            role = data.get("role")
            if flag and role not in (None, "guardrail"):
                raise ValueError(f"'guardrail: true' contradicts 'role: {role}'")
            if not flag and role == "guardrail":
                raise ValueError("'guardrail: false' contradicts 'role: guardrail'")
            if flag:
                data["role"] = "guardrail"
        return data

    @model_validator(mode="after")
    def _check(self) -> MetricDefinition:
        if self.kind == "quantile" and self.quantile is None:
            raise ValueError("a quantile metric needs 'quantile' (e.g. 0.95)")
        if self.kind != "quantile" and self.quantile is not None:
            raise ValueError("'quantile' is only for kind 'quantile'")
        if (self.numerator is None) != (self.denominator is None):
            raise ValueError("a ratio metric needs both 'numerator' and 'denominator'")
        if self.numerator is not None and self.kind != "ratio":
            raise ValueError("'numerator' and 'denominator' are only for kind 'ratio'")
        if self.role == "guardrail" and self.margin is None:
            raise ValueError("a guardrail needs 'margin': the harm it accepts (0 accepts none)")
        if self.cap is not None and self.kind not in ("continuous", "ratio"):
            raise ValueError("'cap' is for continuous and ratio metrics (a unit's value, a ratio's numerator)")
        if self.role != "guardrail" and (self.margin is not None or self.relative_margin):
            raise ValueError("'margin' and 'relative_margin' are only for guardrails (role: guardrail)")
        self._check_activity()
        return self

    def _check_activity(self) -> None:
        if self.activity == "retention" and self.day is None:
            raise ValueError("a retention metric needs 'day': the day after the first exposure it asks about")
        if self.activity != "retention" and (self.day is not None or self.window_days is not None):
            raise ValueError("'day' and 'window_days' are only for retention metrics (activity: retention)")
        if self.activity not in ("sessions", "turns_per_session") and self.session_gap_minutes is not None:
            raise ValueError("'session_gap_minutes' is only for activity: sessions or turns_per_session")
        if self.activity is not None and self.numerator is not None:
            raise ValueError("an activity metric has no 'numerator' or 'denominator': its activity defines it")

    @property
    def retention_window_days(self) -> float:
        """Return a retention metric's window in days (``window_days``, default 1: day N only)."""
        return self.window_days if self.window_days is not None else DEFAULT_RETENTION_WINDOW_DAYS

    @property
    def session_gap_s(self) -> float:
        """Return the pause, in seconds, after which a unit's next request starts a new session."""
        return 60 * (self.session_gap_minutes if self.session_gap_minutes is not None
                     else DEFAULT_SESSION_GAP_MINUTES)

    @property
    def guardrail(self) -> bool:
        """Return True when the metric is a guardrail."""
        return self.role == "guardrail"

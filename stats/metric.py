"""The definition of a KPI: one contract, used by the config file and by the statistics engine."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MetricKind = Literal["binary", "continuous", "ratio", "quantile"]
MetricRole = Literal["primary", "secondary", "guardrail", "diagnostic"]
ROLES: tuple[MetricRole, ...] = ("primary", "secondary", "guardrail", "diagnostic")


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
        return self

    @property
    def guardrail(self) -> bool:
        """Return True when the metric is a guardrail."""
        return self.role == "guardrail"

"""The definition of a KPI: one contract, used by the config file and by the statistics engine."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MetricKind = Literal["binary", "continuous", "ratio", "quantile"]


class MetricDefinition(BaseModel):
    """A metric of an experiment: what it measures, which way is better, whether it is a guardrail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    kind: MetricKind
    direction: Literal["increase", "decrease"] = "increase"
    guardrail: bool = False
    margin: float | None = Field(None, ge=0)
    relative_margin: bool = False  # margin as a share of the control's value (0.05 = 5%) instead of absolute
    quantile: float | None = Field(None, gt=0, lt=1)  # for kind "quantile", e.g. 0.95
    # for kind "ratio" over outcomes: per unit, sum of the numerator outcome / the denominator
    # ("requests", or another outcome metric's sum)
    numerator: str | None = None
    denominator: str | None = None
    description: str | None = None

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
        return self

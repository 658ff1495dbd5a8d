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
    description: str | None = None

    @model_validator(mode="after")
    def _check(self) -> MetricDefinition:
        if self.kind == "quantile" and self.quantile is None:
            raise ValueError("a quantile metric needs 'quantile' (e.g. 0.95)")
        if self.kind != "quantile" and self.quantile is not None:
            raise ValueError("'quantile' is only for kind 'quantile'")
        return self

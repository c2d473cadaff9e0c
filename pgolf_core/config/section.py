"""The base of every config section: unknown keys forbidden, types strict, values frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every section: unknown keys forbidden, types strict (no "9" for 9), frozen, and every
    float finite: inf and NaN (YAML .inf, .nan, 1e999) are refused, including in lists of floats. A
    field that means to accept them would declare ``Annotated[float, AllowInfNan(True)]`` and say so in
    its description; none does today."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, validate_default=True, allow_inf_nan=False
    )

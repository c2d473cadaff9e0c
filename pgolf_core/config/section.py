"""The base of every config section: unknown keys forbidden, types strict, values frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every section: unknown keys forbidden, types strict (no "9" for 9), frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

"""The base of every settings model: frozen, unknown keys refused, strict types."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

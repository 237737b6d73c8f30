"""A reranker as data: its registered name and the keyword arguments it is created with.

The one schema for reranker configurations, used by service experiments (A/B arms) and benchmark
system files alike. Needs pydantic (the ``service`` and ``bench`` extras install it).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from twostage_search.engine.protocols import Reranker
from twostage_search.engine.registry import rerankers


class RerankerConfig(BaseModel):
    """A registered reranker and the keyword parameters it is created with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="identity", description="registered reranker name", examples=["cross-encoder"])
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the reranker")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in rerankers:
            raise ValueError(f"unknown reranker {name!r} (known: {', '.join(rerankers.names())})")
        return name

    def key(self) -> str:
        """Canonical form: configurations with equal keys build equal rerankers (and may share one)."""
        return json.dumps({"name": self.name, "params": self.params}, sort_keys=True, default=str)

    def build(self) -> Reranker:
        """Create the reranker (loads its model)."""
        return rerankers.get(self.name)(**self.params)

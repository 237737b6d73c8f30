"""Cost records: what one stage spent on one query (wall time, documents, tokens, money)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StageCost:
    """The cost of one stage for one query.

    Attributes:
        stage: ``"retrieve"`` or ``"rerank"`` (or a finer name such as ``"rerank:cross-encoder"``).
        wall_ms: wall-clock milliseconds spent in the stage.
        docs: documents retrieved (first stage) or scored (reranker).
        tokens_in: model input tokens processed (0 where no model reads text).
        tokens_out: model output tokens generated (LLM rerankers).
        usd: money spent (API backends; 0 for local models).
    """

    stage: str
    wall_ms: float
    docs: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float = 0.0

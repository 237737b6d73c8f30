"""Fit a :class:`~engine.costmodel.CostModel` for a retriever and a reranker on this machine.

Runs real queries at a grid of depths, records (k, wall ms, tokens) per stage and fits
``ms = a + b·k`` by least squares; ``twostage calibrate`` saves the result beside the configuration.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from datetime import UTC, datetime

from twostage_search.engine.costmodel import CostModel, LinearCost, Observation
from twostage_search.engine.errors import InputError
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.protocols import Reranker, Retriever
from twostage_search.engine.types import Query

log = logging.getLogger(__name__)


def calibrate(
    retriever: Retriever,
    reranker: Reranker,
    queries: Sequence[Query],
    *,
    ks: Sequence[int] = (5, 10, 20, 50),
    depths: Sequence[int] = (10, 50, 100),
    usd_per_token_in: float = 0.0,
    usd_per_token_out: float = 0.0,
    warmup: int = 2,
    progress: bool = False,
) -> tuple[CostModel, dict[str, list[Observation]]]:
    """Measure both stages on ``queries`` and fit their cost models.

    Each query is retrieved at every depth in ``depths`` and reranked at every ``k`` in ``ks``
    (the top k of its first-stage candidates). Returns the model and the raw observations.
    """
    from tqdm.auto import tqdm

    ks = sorted({k for k in ks if k > 0})
    depths = sorted({d for d in depths if d > 0})
    if len(ks) < 2 or len(depths) < 2:
        raise InputError("calibration needs at least two positive k and two depths")
    if not queries:
        raise InputError("calibration needs queries")
    engine = TwoStage(retriever, reranker, depth=max(max(ks), max(depths)))
    for q in queries[:warmup]:
        engine.run(q, k=10, rerank_depth=ks[0])
    observed: dict[str, list[Observation]] = {"retrieve": [], "rerank": []}
    for q in tqdm(queries, desc="calibrate", unit="query", disable=not progress):
        for depth in depths:
            shallow = TwoStage(retriever, reranker, depth=depth)
            result = shallow.run(q, k=min(10, depth), rerank_depth=0)
            observed["retrieve"].append(Observation(depth, result.stage_ms("retrieve") + result.stage_ms("encode")))
        for k in ks:
            cost = engine.run(q, k=10, rerank_depth=k).cost("rerank")
            if cost is not None:
                observed["rerank"].append(Observation(cost.docs, cost.wall_ms, cost.tokens_in))
    model = CostModel(
        {
            "retrieve": LinearCost.fit(observed["retrieve"]),
            "rerank": LinearCost.fit(
                observed["rerank"], usd_per_token_in=usd_per_token_in, usd_per_token_out=usd_per_token_out
            ),
        },
        {
            "reranker": getattr(reranker, "name", type(reranker).__name__),
            "queries": len(queries),
            "ks": list(ks),
            "depths": list(depths),
            "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
            "calibrated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return model, observed

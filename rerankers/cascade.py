"""Two rerankers in a cascade: a cheap one on every candidate, an expensive one on the top ``k2`` of
the queries it marks hard (LORE's serving tiers: the LLM runs in real time only where it matters)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twostage_search.engine.cost import StageCost
from twostage_search.engine.costed import costed_reranker, deadline_reranker
from twostage_search.engine.deadline import Deadline, PartialRanking
from twostage_search.engine.pipeline import merge_cascade
from twostage_search.engine.protocols import Reranker
from twostage_search.engine.registry import rerankers
from twostage_search.engine.types import Candidate, Query, RankedList

HardRule = Callable[[Query, RankedList], bool]


def margin_rule(margin: float) -> HardRule:
    """Hard when the first reranker's top two scores are closer than ``margin`` (an uncertain top)."""

    def is_hard(query: Query, ranking: RankedList) -> bool:
        return len(ranking) > 1 and ranking[0].score - ranking[1].score < margin

    return is_hard


def _build(spec: str | Reranker, params: Mapping[str, Any] | None) -> Reranker:
    return rerankers.get(spec)(**dict(params or {})) if isinstance(spec, str) else spec


class CascadeReranker:
    """``first`` reranks all candidates; ``second`` reranks its top ``k2`` when ``is_hard`` says so.

    Args:
        first, second: registered reranker names (with ``first_params``/``second_params``) or instances.
        k2: how many of the first reranker's top candidates the second one sees.
        hard_margin: a query is hard when the first reranker's top-2 score margin is below this
            (``None``: every query is hard). ``is_hard`` replaces the rule with any callable.
        first_share: under a deadline, the share of the remaining time the first reranker may use; the
            second gets what is left (``rerank_until``).

    Costs are reported per stage (``rerank`` and ``rerank2``) through ``rerank_with_costs``.
    """

    name = "cascade"

    def __init__(
        self,
        first: str | Reranker = "identity",
        second: str | Reranker = "identity",
        *,
        k2: int = 10,
        first_params: Mapping[str, Any] | None = None,
        second_params: Mapping[str, Any] | None = None,
        hard_margin: float | None = None,
        is_hard: HardRule | None = None,
        first_share: float = 0.5,
    ) -> None:
        if k2 < 1:
            raise ValueError("k2 must be at least 1")
        if not 0 < first_share <= 1:
            raise ValueError("first_share must be in (0, 1]")
        self.first_share = first_share
        self.first = _build(first, first_params)
        self.second = _build(second, second_params)
        self.k2 = k2
        self.is_hard: HardRule = is_hard or (margin_rule(hard_margin) if hard_margin is not None else _always)
        self._first = costed_reranker(self.first, "rerank")
        self._second = costed_reranker(self.second, "rerank2")
        self._first_until = deadline_reranker(self.first, "rerank")
        self._second_until = deadline_reranker(self.second, "rerank2")

    def rerank_with_costs(
        self, query: Query, candidates: Sequence[Candidate]
    ) -> tuple[RankedList, tuple[StageCost, ...]]:
        ranking, first_costs = self._first(query, candidates)
        if not ranking or not self.is_hard(query, ranking):
            return ranking, first_costs
        ordered = ranking.candidates()
        top, rest = ordered[: self.k2], ordered[self.k2 :]
        second, second_costs = self._second(query, top)
        return merge_cascade(query.query_id, second, rest), (*first_costs, *second_costs)

    def rerank_until(self, query: Query, candidates: Sequence[Candidate], deadline: Deadline) -> PartialRanking:
        """Split the deadline: the first reranker gets ``first_share`` of the time left, the second the rest.

        If the first is cut short, the second does not run (its input would mix scored and unscored
        candidates); if the second is cut short, the candidates it did not reach keep the first's order.
        """
        first = self._first_until(query, candidates, deadline.share(self.first_share))
        if first.degraded or not first.ranking or not self.is_hard(query, first.ranking):
            return first
        ordered = first.ranking.candidates()
        top, rest = ordered[: self.k2], ordered[self.k2 :]
        second = self._second_until(query, top, deadline)
        if not second.ranking:  # no time left for the second: the first's ranking stands
            return PartialRanking(first.ranking, first.costs, degraded=True)
        below = [*second.unscored, *rest]  # in the first reranker's order
        merged = merge_cascade(query.query_id, second.ranking, below)
        return PartialRanking(merged, (*first.costs, *second.costs), degraded=second.degraded)

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return self.rerank_with_costs(query, candidates)[0]


def _always(query: Query, ranking: RankedList) -> bool:
    return True

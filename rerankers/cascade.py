"""Two rerankers in a cascade: a cheap one on every candidate, an expensive one on the top ``k2`` of
the queries it marks hard (LORE's serving tiers: the LLM runs in real time only where it matters).

With ``judge_above`` set the cascade works pair by pair instead: the first reranker judges every candidate
(a grade with P(grade), e.g. ``graded``) and only the pairs whose P(grade) is uncertain — entropy or
1 − top-2 margin above ``judge_above`` — go to the second judge (e.g. ``lore``, whose judgement cache makes
a repeated pair free); the rest keep the first judge's grade.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from twostage_search.engine.cost import StageCost
from twostage_search.engine.costed import costed_reranker, deadline_reranker
from twostage_search.engine.deadline import Deadline, PartialRanking
from twostage_search.engine.pipeline import merge_cascade
from twostage_search.engine.protocols import Reranker
from twostage_search.engine.registry import rerankers
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.llm.lore_labels import Judgement

HardRule = Callable[[Query, RankedList], bool]


@runtime_checkable
class Judge(Protocol):
    """A reranker that also grades: one judgement (label, E[grade], P(grade)) per candidate, input order."""

    def judge(self, query: Query, candidates: Sequence[Candidate]) -> list[Judgement]: ...


def entropy(probs: Sequence[float]) -> float:
    """Shannon entropy of P(grade) in nats (0: certain; ln 4 ≈ 1.386: four grades alike)."""
    return float(-sum(p * math.log(p) for p in probs if p > 0))


def margin_uncertainty(probs: Sequence[float]) -> float:
    """1 − (P of the most probable grade − P of the second): 0 when certain, 1 when the top two tie."""
    top = sorted(probs, reverse=True)
    return 1.0 - (top[0] - (top[1] if len(top) > 1 else 0.0))


UNCERTAINTY: dict[str, Callable[[Sequence[float]], float]] = {"entropy": entropy, "margin": margin_uncertainty}


@dataclass(frozen=True, slots=True)
class CascadeJudgements:
    """What :meth:`CascadeReranker.judge_explained` returns.

    ``judgements`` are in input order: the second judge's for the ``escalated`` indices (where it read a
    label), the first's elsewhere; ``uncertainty`` is each pair's under the first judge; ``judged`` counts
    the second judge's fresh judgements (its cache hits are in ``cached``); ``costs`` per stage
    (``rerank``, then ``rerank2`` when a pair was escalated).
    """

    judgements: tuple[Judgement, ...]
    uncertainty: tuple[float, ...]
    escalated: tuple[int, ...]
    costs: tuple[StageCost, ...]
    judged: int = 0
    cached: int = 0


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
        judge_above: pair mode (see the module): a pair goes to the second judge when its uncertainty under
            the first judge is above this (``None``: query mode, the default). Both rerankers must judge
            (``judge(query, candidates)`` with P(grade), like ``graded`` and ``lore``); candidates are ranked
            by the resulting E[grade] and ``k2``/``hard_margin``/``is_hard`` are not used.
        uncertainty: ``"entropy"`` (nats) or ``"margin"`` (1 − top-2 margin of P(grade)), for ``judge_above``.

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
        judge_above: float | None = None,
        uncertainty: str = "entropy",
    ) -> None:
        if k2 < 1:
            raise ValueError("k2 must be at least 1")
        if not 0 < first_share <= 1:
            raise ValueError("first_share must be in (0, 1]")
        if uncertainty not in UNCERTAINTY:
            raise ValueError(f"uncertainty must be one of {', '.join(UNCERTAINTY)}")
        self.judge_above = judge_above
        self.uncertainty = UNCERTAINTY[uncertainty]
        self.first_share = first_share
        self.first = _build(first, first_params)
        self.second = _build(second, second_params)
        self.k2 = k2
        self.is_hard: HardRule = is_hard or (margin_rule(hard_margin) if hard_margin is not None else _always)
        self._first = costed_reranker(self.first, "rerank")
        self._second = costed_reranker(self.second, "rerank2")
        self._first_until = deadline_reranker(self.first, "rerank")
        self._second_until = deadline_reranker(self.second, "rerank2")
        if judge_above is not None and not (isinstance(self.first, Judge) and isinstance(self.second, Judge)):
            raise ValueError("judge_above needs two judges (rerankers with judge(), such as graded and lore)")

    # ------------------------------------------------------------------------------------ pair mode
    def judge(self, query: Query, candidates: Sequence[Candidate]) -> list[Judgement]:
        """One judgement per candidate, input order (pair mode; see :meth:`judge_explained`)."""
        return list(self.judge_explained(query, candidates).judgements)

    def judge_explained(self, query: Query, candidates: Sequence[Candidate]) -> CascadeJudgements:
        """The first judge on every candidate, the second on the uncertain ones (:meth:`escalate`)."""
        first, cost = self._first_judgements(query, candidates)
        return self.escalate(query, candidates, first, (cost,))

    def _first_judgements(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[Judgement], StageCost]:
        started = time.perf_counter()
        with_cost = getattr(self.first, "judge_with_cost", None)
        if with_cost is not None:
            first, cost = with_cost(query, candidates)
            return list(first), replace(cost, stage="rerank")
        assert isinstance(self.first, Judge)
        judged = self.first.judge(query, candidates)
        return list(judged), StageCost("rerank", (time.perf_counter() - started) * 1000, docs=len(candidates))

    def escalate(
        self,
        query: Query,
        candidates: Sequence[Candidate],
        first: Sequence[Judgement],
        costs: tuple[StageCost, ...] = (),
    ) -> CascadeJudgements:
        """Send the pairs whose uncertainty under ``first`` (the first judge's judgements, input order) is
        above ``judge_above`` to the second judge; the others keep ``first``.

        A judgement without P(grade) counts as uncertain. A second judge with ``rerank_explained`` (``lore``)
        is asked through it with ``force=True``, so its judgement cache serves repeated pairs; a pair whose
        label it cannot read keeps the first judge's judgement.
        """
        if self.judge_above is None:
            raise ValueError("escalate needs judge_above (pair mode)")
        if len(first) != len(candidates):
            raise ValueError(f"{len(first)} judgements for {len(candidates)} candidates")
        unc = tuple(self.uncertainty(j.probs) if j.probs is not None else math.inf for j in first)
        up = tuple(i for i, u in enumerate(unc) if u > self.judge_above)
        if not up:
            return CascadeJudgements(tuple(first), unc, (), costs)
        started = time.perf_counter()
        sub = [candidates[i] for i in up]
        judged, cached = len(sub), 0
        explained = getattr(self.second, "rerank_explained", None)
        if explained is not None:
            result = explained(query, sub, force=True)
            by_id = {j.doc_id: j for j in result.judgements}
            second = [by_id[c.doc_id] for c in sub]
            cost = replace(result.cost, stage="rerank2")
            judged, cached = result.judged, result.cached
        else:
            assert isinstance(self.second, Judge)
            second = list(self.second.judge(query, sub))
            cost = StageCost("rerank2", (time.perf_counter() - started) * 1000, docs=len(sub))
        out = list(first)
        for i, j in zip(up, second, strict=True):
            if j.label is not None:
                out[i] = j
        return CascadeJudgements(tuple(out), unc, up, (*costs, cost), judged, cached)

    # ----------------------------------------------------------------------------------- reranking
    def rerank_with_costs(
        self, query: Query, candidates: Sequence[Candidate]
    ) -> tuple[RankedList, tuple[StageCost, ...]]:
        if self.judge_above is not None:
            result = self.judge_explained(query, candidates)
            scores = [j.expected for j in result.judgements]
            return RankedList.from_scores(query.query_id, candidates, scores), result.costs
        ranking, first_costs = self._first(query, candidates)
        if not ranking or not self.is_hard(query, ranking):
            return ranking, first_costs
        ordered = ranking.candidates()
        top, rest = ordered[: self.k2], ordered[self.k2 :]
        second, second_costs = self._second(query, top)
        return merge_cascade(query.query_id, second, rest), (*first_costs, *second_costs)

    def rerank_until(self, query: Query, candidates: Sequence[Candidate], deadline: Deadline) -> PartialRanking:
        """Split the deadline: the first reranker gets ``first_share`` of the time left, the second the rest
        (pair mode: the first judges every candidate, the second runs only if the deadline has not passed).

        If the first is cut short, the second does not run (its input would mix scored and unscored
        candidates); if the second is cut short, the candidates it did not reach keep the first's order.
        """
        if self.judge_above is not None:  # pair mode: the second judge runs only if time is left after the first
            graded, cost = self._first_judgements(query, candidates)
            if deadline.expired():
                ranking = RankedList.from_scores(query.query_id, candidates, [j.expected for j in graded])
                return PartialRanking(ranking, (cost,), degraded=True)
            result = self.escalate(query, candidates, graded, (cost,))
            ranking = RankedList.from_scores(query.query_id, candidates, [j.expected for j in result.judgements])
            return PartialRanking(ranking, result.costs)
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

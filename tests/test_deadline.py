"""Cooperative deadlines (engine/deadline.py) for every reranker, and scores that mean something.

Deterministic: a deadline is either already expired, far away, or cancelled by the test's LLM backend
double after its first call — no assertion depends on how fast this machine is.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import need
from twostage_search.engine.costed import deadline_reranker
from twostage_search.engine.deadline import Deadline, PartialRanking
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.protocols import HonoursDeadline
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.cascade import CascadeReranker
from twostage_search.rerankers.identity import IdentityReranker

SCORES = {f"d{i:02d}": float(20 - i) for i in range(1, 13)}  # d01 best ... d12 worst


class Fixed:
    """A first stage with fixed scores."""

    def retrieve(self, query: Query, k: int) -> RankedList:
        return RankedList.from_candidates(query.query_id, [Candidate(d, s, f"text {d}") for d, s in SCORES.items()], k)


class Reverse:
    """A reranker that reverses the first-stage order (scores 1..n), so who ordered what is visible."""

    def rerank(self, query: Query, candidates) -> RankedList:
        n = len(candidates)
        return RankedList.from_scores(query.query_id, candidates, [float(i) for i in range(n)])


def far() -> Deadline:
    return Deadline.after(3600)


def gone() -> Deadline:
    return Deadline.after(0)


# --------------------------------------------------------------------------- scores that mean something
def test_nothing_reranked_serves_first_stage_scores_unchanged():
    first = Fixed().retrieve(Query("q", "x"), 12)
    result = TwoStage(Fixed(), Reverse(), depth=12, rerank_depth=0).run(Query("q", "x"), k=5)
    assert [(h.doc_id, h.score) for h in result.ranking] == [(h.doc_id, h.score) for h in first.head(5)]
    assert all(result.stage_of(h.doc_id) == "first" for h in result.ranking)
    late = TwoStage(Fixed(), Reverse(), depth=12, rerank_depth=4).run(Query("q", "x"), k=5, deadline=gone())
    assert late.degraded and late.rerank_depth == 0
    assert [(h.doc_id, h.score) for h in late.ranking] == [(h.doc_id, h.score) for h in first.head(5)]


def test_partial_rerank_keeps_first_stage_score_and_stage():
    result = TwoStage(Fixed(), Reverse(), depth=12, rerank_depth=3).run(Query("q", "x"), k=5)
    # Reverse puts d03 (score 2) above d02 (1) and d01 (0); d04, d05 follow in first-stage order
    assert result.ranking.doc_ids == ["d03", "d02", "d01", "d04", "d05"]
    assert [result.stage_of(d) for d in result.ranking.doc_ids] == ["rerank"] * 3 + ["first"] * 2
    assert result.first_scores == {"d01": 19.0, "d02": 18.0, "d03": 17.0, "d04": 16.0, "d05": 15.0}


def test_relevance_floor_drops_reranked_hits_below_it_and_counts_them():
    result = TwoStage(Fixed(), Reverse(), depth=12, rerank_depth=4, min_score=2.0).run(Query("q", "x"), k=5)
    assert result.dropped == 2  # d03 (1.0) and d04 (0.0)... reversed: d04=3, d03=2, d02=1, d01=0
    assert result.ranking.doc_ids == ["d04", "d03", "d05", "d06", "d07"]


# ---------------------------------------------------------------------------------- Deadline record
def test_deadline_share_and_cancel_propagate():
    d = far()
    part = d.share(0.5)
    assert 0 < part.remaining_s() <= d.remaining_s()
    d.cancel()
    assert part.expired() and d.remaining_s() == 0.0
    with pytest.raises(Exception, match="share"):
        far().share(0)


# -------------------------------------------------------------------------------- each reranker
@pytest.fixture(scope="module")
def ce():
    need("sentence_transformers", "rerank")
    from twostage_search.rerankers.cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker("bundled:ce-minilm-l6-scifact", batch_size=2)


def _cands(tiny_docs, n=5) -> list[Candidate]:
    return [Candidate(d.doc_id, float(10 - i), d.text, d.title) for i, d in enumerate(tiny_docs[:n])]


def test_cross_encoder_honours_deadline(ce, tiny_docs):
    q = Query("q", "capital of france")
    cands = _cands(tiny_docs)
    assert isinstance(ce, HonoursDeadline)
    done = ce.rerank_until(q, cands, far())
    whole = ce.rerank(q, cands)
    assert not done.degraded and done.ranking.doc_ids == whole.doc_ids
    assert [h.score for h in done.ranking] == pytest.approx([h.score for h in whole], abs=1e-4)
    cut = ce.rerank_until(q, cands, gone())
    assert cut.degraded and len(cut.ranking) == 0 and [c.doc_id for c in cut.unscored] == [c.doc_id for c in cands]


def test_cross_encoder_is_thread_safe(ce, tiny_docs):
    """Many threads scoring different lengths at once (the shared-tokenizer race answered 500 before)."""
    from concurrent.futures import ThreadPoolExecutor

    cands = _cands(tiny_docs, 6)
    queries = [Query(f"q{i}", "word " * (1 + 40 * (i % 3))) for i in range(12)]
    expected = {q.query_id: ce.rerank(q, cands).doc_ids for q in queries[:3]}
    with ThreadPoolExecutor(6) as pool:
        out = list(pool.map(lambda q: ce.rerank(q, cands).doc_ids, queries))
    assert all(out[i] == expected[f"q{i % 3}"] for i in range(12))


class CancelAfter:
    """An LLM backend double: answers with ``answer(prompt)`` and cancels ``deadline`` after ``n`` calls."""

    name = model = "cancel-after"

    def __init__(self, answer: Callable[[object], str], deadline: Deadline, n: int = 1) -> None:
        self.answer, self.deadline, self.n, self.calls = answer, deadline, n, 0

    def generate(self, prompts, *, max_tokens, temperature=0.0, logprobs=None, stop=None):
        from twostage_search.rerankers.llm.backends import Completion

        self.calls += 1
        if self.calls >= self.n:
            self.deadline.cancel()
        return [Completion(self.answer(p), tokens_in=10, tokens_out=1) for p in prompts]

    def truncate(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:max_tokens])


def test_lore_judges_pointwise_until_the_deadline(tiny_docs):
    from twostage_search.rerankers.llm.lore import JudgementCache, LoreReranker

    deadline = far()
    backend = CancelAfter(lambda p: "4", deadline, n=2)  # "Label: L" + "4": every item is L4
    lore = LoreReranker(backend, logprobs=None, cache=JudgementCache(0))
    cands = _cands(tiny_docs)
    out = lore.rerank_until(Query("q", "x"), cands, deadline)
    assert isinstance(lore, HonoursDeadline) and backend.calls == 2
    assert out.degraded and out.ranking.doc_ids == ["d01", "d02"]  # the two best first-stage candidates
    assert [c.doc_id for c in out.unscored] == ["d03", "d04", "d05"]
    assert out.costs[0].docs == 2


def test_listwise_stops_between_windows(tiny_docs):
    from twostage_search.rerankers.llm.listwise import ListwiseLLMReranker

    deadline = far()
    backend = CancelAfter(lambda p: "[2] > [1]", deadline, n=1)  # swaps each window's two passages
    listwise = ListwiseLLMReranker(backend, window=2, stride=1)
    cands = _cands(tiny_docs)
    out = listwise.rerank_until(Query("q", "x"), cands, deadline)
    assert backend.calls == 1 and out.degraded
    # one window (the last two, d04 d05) ran and swapped them; the rest kept first-stage order
    assert out.ranking.doc_ids == ["d01", "d02", "d03", "d05", "d04"]
    full = listwise.rerank_until(Query("q", "x"), cands, far())
    assert not full.degraded


def test_cascade_splits_the_deadline_and_reports_degraded(tiny_docs):
    from twostage_search.rerankers.llm.lore import JudgementCache, LoreReranker

    deadline = far()
    second = LoreReranker(CancelAfter(lambda p: "4", deadline, n=1), logprobs=None, cache=JudgementCache(0))
    cascade = CascadeReranker(IdentityReranker(), second, k2=3)
    out = cascade.rerank_until(Query("q", "x"), _cands(tiny_docs), deadline)
    assert isinstance(out, PartialRanking) and out.degraded
    # the second judged d01 only; d02, d03 (its unscored) and d04, d05 follow in the first's order
    assert out.ranking.doc_ids == ["d01", "d02", "d03", "d04", "d05"]
    assert [c.stage for c in out.costs] == ["rerank", "rerank2"]
    late = cascade.rerank_until(Query("q", "x"), _cands(tiny_docs), gone())
    assert late.degraded


def test_adapter_for_plain_rerankers():
    call = deadline_reranker(Reverse())
    cands = [Candidate("a", 2.0), Candidate("b", 1.0)]
    assert call(Query("q", "x"), cands, far()).ranking.doc_ids == ["b", "a"]
    skipped = call(Query("q", "x"), cands, gone())
    assert skipped.degraded and not skipped.ranking and len(skipped.unscored) == 2

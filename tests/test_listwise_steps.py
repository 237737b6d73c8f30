"""The listwise LLM reranker's top-down window steps (``rerank_step``) and depth decided between them.

The scripted backend answers every window in reverse, so each expected order is worked out by hand; the
last test runs the real bundled model (Qwen2.5-Coder-0.5B-Instruct GGUF) through ``TwoStage`` and checks
the stop rule against what each step returned, not the model's (weak) relevance judgements.
"""

from __future__ import annotations

import pytest

from tests.helpers import need
from twostage_search.engine.chunked import ChunkedDepth, EnteredRule
from twostage_search.engine.costmodel import CostModel, LinearCost
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.protocols import RerankInSteps
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.llm.backends import ChatPrompt, Completion
from twostage_search.rerankers.llm.listwise import ListwiseLLMReranker

need("llama_cpp", "llm")

MS_PER_DOC = CostModel({"rerank": LinearCost((0.0, 1.0, 0.0))})
Q = Query("q", "what is the capital of france")


class Reversing:
    """A scripted backend: every window answered in reverse order; 100 tokens in, 10 out per window."""

    name = model = "reversing"

    def __init__(self) -> None:
        self.windows: list[int] = []

    def generate(self, prompts, *, max_tokens, temperature=0.0, logprobs=None, stop=None) -> list[Completion]:
        out = []
        for p in prompts:
            assert isinstance(p, ChatPrompt)
            n = sum(1 for line in p.messages[-1][1].splitlines() if line.startswith("["))
            self.windows.append(n)
            out.append(Completion(" > ".join(f"[{i}]" for i in range(n, 0, -1)), tokens_in=100, tokens_out=10))
        return out

    def truncate(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:max_tokens])


@pytest.fixture
def docs(tiny_docs) -> list[Candidate]:
    return [Candidate(d.doc_id, 100.0 - i, d.text, d.title) for i, d in enumerate(tiny_docs[:8])]


def ids(cands):
    return [c.doc_id for c in cands]


def test_a_step_shows_the_top_of_the_order_with_the_new_candidates(docs):
    c = ids(docs)
    backend = Reversing()
    reranker = ListwiseLLMReranker(backend, window=4, stride=2)
    assert isinstance(reranker, RerankInSteps)
    # 2 new: one window of the top 4 − 2 = 2 and the 2 new, reversed; the rest of the order stays below
    order, cost = reranker.rerank_step(Q, docs[:5], docs[5:7])
    assert ids(order) == [c[6], c[5], c[1], c[0], c[2], c[3], c[4]]
    assert backend.windows == [4] and (cost.docs, cost.tokens_in, cost.tokens_out) == (2, 100, 10)
    # 3 new (more than the stride): the top 2 and the 3 new in a back-to-front pass, windows at 1 then 0:
    # [0 3 4 5] <- [1 3 4 5] reversed = 0 5 4 3 1; then [0 5 4 3] reversed = 3 4 5 0 | 1; then the rest, 2
    order, cost = reranker.rerank_step(Q, docs[:3], docs[3:6])
    assert ids(order) == [c[3], c[4], c[5], c[0], c[1], c[2]]
    assert backend.windows == [4, 4, 4] and cost.docs == 3 and cost.tokens_in == 200
    # nothing ordered yet: the first chunk is ordered as rerank orders it
    order, _ = reranker.rerank_step(Q, [], docs[:4])
    assert ids(order) == [c[3], c[2], c[1], c[0]] == reranker.rerank(Q, docs[:4]).doc_ids


class Recorder:
    """Passes each step to the real reranker and keeps what went in and came out."""

    name = "listwise-llm"

    def __init__(self, inner: ListwiseLLMReranker) -> None:
        self.inner = inner
        self.steps: list[tuple[list[str], list[str]]] = []

    def rerank_step(self, query, ranked, new):
        order, cost = self.inner.rerank_step(query, ranked, new)
        self.steps.append((ids(new), ids(order)))
        return order, cost

    def rerank(self, query, candidates) -> RankedList:
        return self.inner.rerank(query, candidates)


class ListRetriever:
    def __init__(self, cands):
        self.cands = cands

    def retrieve(self, query, k):
        return RankedList.from_candidates(query.query_id, self.cands, k=k)


def test_real_model_steps_go_on_exactly_while_a_step_enters_the_top(llm, docs):
    reranker = Recorder(ListwiseLLMReranker(llm, window=5, stride=2, max_passage_tokens=40))
    # first chunk 3, then steps of 2 (the top 3 with the next 2: one window of 5); stop after a step that
    # put nothing into the top 3
    policy = ChunkedDepth(MS_PER_DOC, EnteredRule(), 1.0, chunk=2, first=3, top=3)
    result = TwoStage(ListRetriever(docs), reranker, depth=8, policy=policy).run(Q, k=8)
    steps = reranker.steps
    assert [len(new) for new, _ in steps] == [3, 2, 2, 1][: len(steps)]
    entered = [any(d in order[:3] for d in new) for new, order in steps]
    assert all(entered[:-1])  # it went on after every step but the last: each put something into the top 3
    assert not entered[-1] or len(steps) == 4  # and stopped after one that did not, or at the last candidate
    depth = sum(len(new) for new, _ in steps)
    assert result.rerank_depth == depth and result.cost("rerank").docs == depth
    # the ranking: the last step's order, then the candidates not read in first-stage order, sorted by score
    assert result.ranking.doc_ids == steps[-1][1] + ids(docs[depth:])
    scores = [h.score for h in result.ranking]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert sorted(result.ranking.doc_ids) == sorted(ids(docs))

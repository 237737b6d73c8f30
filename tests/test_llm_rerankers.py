"""LLM rerankers: parsing and repair, the LORE label logic, caching and tiering, the llama.cpp backend.

Model-backed tests use the real bundled instruction model (Qwen2.5-Coder-0.5B-Instruct, GGUF, through
llama-cpp-python). It is too small to judge relevance well (see the README's measured numbers), so these
tests check behaviour — formats, probabilities, costs, caching, determinism — not quality. The scripted
backend below only feeds deliberately malformed answers to the parsers' repair paths.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import pytest

from tests.helpers import need
from twostage_search.engine.errors import InputError
from twostage_search.engine.protocols import ReportsCost, Reranker
from twostage_search.engine.registry import rerankers
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.llm.backends import ChatPrompt, Completion, Pricing, apply_stop, llm_backends
from twostage_search.rerankers.llm.listwise import ListwiseLLMReranker, parse_permutation, window_starts
from twostage_search.rerankers.llm.lore import (
    JudgementCache,
    LoreReranker,
    label_probabilities,
    parse_label,
)

need("llama_cpp", "llm")


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def cands(tiny_docs) -> list[Candidate]:
    by_id = {d.doc_id: d for d in tiny_docs}
    # A pretend first stage: the relevant document (d01) third.
    return [Candidate(d, 3.0 - i, by_id[d].text, by_id[d].title) for i, d in enumerate(["d02", "d09", "d01"])]


class Scripted:
    """A test double that answers with a fixed function of the prompt (for the parsers' repair paths)."""

    name = "scripted"
    model = "scripted"

    def __init__(self, answer: Callable[[ChatPrompt | str], str]) -> None:
        self.answer = answer
        self.calls = 0
        self.pricing = Pricing(0.001, 0.002)

    def generate(self, prompts, *, max_tokens, temperature=0.0, logprobs=None, stop=None) -> list[Completion]:
        self.calls += len(prompts)
        return [
            Completion(self.answer(p), tokens_in=100, tokens_out=10, usd=self.pricing.cost(100, 10)) for p in prompts
        ]

    def truncate(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:max_tokens])


# ------------------------------------------------------------------------------------ pure parsing
@pytest.mark.parametrize(
    ("text", "n", "order", "repeated", "missing", "out_of_range"),
    [
        ("[3] > [1] > [2]", 3, (2, 0, 1), 0, 0, 0),
        ("[2] > [2] > [1] > [3]", 3, (1, 0, 2), 1, 0, 0),  # repeated: first occurrence wins
        ("[3] > [9] > [0] > [1]", 3, (2, 0, 1), 0, 1, 2),  # out of range dropped; missing 2 appended
        ("3 > 1", 4, (2, 0, 1, 3), 0, 2, 0),  # bare numbers; missing appended in input order
        ("I cannot rank these.", 3, (0, 1, 2), 0, 3, 0),  # nothing usable: input order, never a crash
        ("[2] Berlin > [1] Paris (2 cities)", 2, (1, 0), 0, 0, 0),  # numbers outside brackets ignored
        ("", 0, (), 0, 0, 0),
    ],
)
def test_parse_permutation_repairs(text, n, order, repeated, missing, out_of_range):
    parsed = parse_permutation(text, n)
    assert parsed.order == order
    assert (parsed.repeated, parsed.missing, parsed.out_of_range) == (repeated, missing, out_of_range)
    assert sorted(parsed.order) == list(range(n))
    assert parsed.ok == (repeated == missing == out_of_range == 0)


def test_window_starts_slide_bottom_up():
    assert window_starts(100, 20, 10) == [80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert window_starts(12, 20, 10) == [0]
    assert window_starts(25, 10, 5) == [15, 10, 5, 0]
    assert window_starts(0, 20, 10) == []


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Needs: x\nChecks: y\nLabel: L3", 3),
        ("label: l4", 4),
        ("**Label:** L2", 2),
        ("Label: L1 ... revised Label: L4", 4),  # the last label counts
        ("Label: L7", None),
        ("The item is relevant.", None),
    ],
)
def test_parse_label(text, label):
    assert parse_label(text) == label


def test_label_probabilities_at_the_label_position():
    lp = math.log
    completion = Completion(
        "Needs: a\nLabel: L3",
        tokens=("Needs", ": a\n", "Label", ":", " L", "3"),
        top_logprobs=(
            {"Needs": 0.0},
            {": a\n": 0.0},
            {"Label": 0.0},
            {":": 0.0},
            {" L": 0.0},
            {"3": lp(0.4), "4": lp(0.2), "2": lp(0.1), "1": lp(0.1), " three": lp(0.2)},
        ),
    )
    probs = label_probabilities(completion)
    assert probs is not None
    assert [round(p, 6) for p in probs] == [0.125, 0.125, 0.5, 0.25]  # normalised over L1..L4
    # Prefilled "Label: L": the first generated token is the label.
    prefilled = Completion("2", tokens=("2",), top_logprobs=({"2": lp(0.6), "1": lp(0.2), "x": lp(0.2)},))
    assert label_probabilities(prefilled, prefix="Label: L") == pytest.approx((0.25, 0.75, 0.0, 0.0))
    assert label_probabilities(Completion("Label: L2")) is None  # no log-probabilities


def test_apply_stop_and_pricing():
    assert apply_stop("abc. def", ["."]) == ("abc", True)
    assert apply_stop("abc", None) == ("abc", False)
    assert Pricing.per_million(2.0, 8.0).cost(1_000, 500) == pytest.approx(0.006)


def test_judgement_cache_is_a_bounded_lru():
    from twostage_search.rerankers.llm.lore import Judgement

    cache = JudgementCache(2)
    cache.put("a", Judgement("a", 1, 1.0))
    cache.put("b", Judgement("b", 2, 2.0))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", Judgement("c", 3, 3.0))  # evicts b
    assert cache.get("b") is None and cache.get("c") is not None and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 1)
    with pytest.raises(InputError):
        JudgementCache(-1)


def test_registries_and_settings():
    assert {"listwise-llm", "lore"} <= set(rerankers.names())
    assert {"llama-cpp", "transformers", "vllm", "openai"} <= set(llm_backends.names())
    with pytest.raises(InputError):
        ListwiseLLMReranker(window=10, stride=11)
    with pytest.raises(InputError):
        LoreReranker(tie_break=0.7)


# ------------------------------------------------------------------ rerankers on a scripted backend
def test_listwise_repairs_bad_answers_and_counts_them(cands):
    backend = Scripted(lambda p: "[2] > [2] > [7]")
    result = ListwiseLLMReranker(backend).rerank_explained(Query("q", "capital of france"), cands)
    # Window order was first-stage order d02, d09, d01; "[2]" → d09 first, then missing d02, d01 appended.
    assert result.ranking.doc_ids == ["d09", "d02", "d01"]
    assert result.repairs == {"windows": 1, "windows_repaired": 1, "repeated": 1, "missing": 2, "out_of_range": 1}
    cost = result.cost
    assert (cost.stage, cost.docs, cost.tokens_in, cost.tokens_out) == ("rerank", 3, 100, 10)
    assert cost.usd == pytest.approx(0.12) and cost.wall_ms > 0


def test_listwise_sliding_window_moves_the_last_document_to_the_top(tiny_docs):
    cands = [Candidate(d.doc_id, 100.0 - i, d.text, d.title) for i, d in enumerate(tiny_docs)]
    last = cands[-1].doc_id

    def answer(prompt: ChatPrompt | str) -> str:  # always puts the passage mentioning "Football" first
        text = prompt.messages[-1][1] if isinstance(prompt, ChatPrompt) else prompt
        numbered = [line for line in text.splitlines() if line.startswith("[")]
        best = next((i for i, line in enumerate(numbered, 1) if line.startswith(f"[{i}] Football")), 1)
        return f"[{best}]"

    football = next(d.doc_id for d in tiny_docs if d.title == "Football")
    reranker = ListwiseLLMReranker(Scripted(answer), window=4, stride=2)
    result = reranker.rerank_explained(Query("q", "football"), cands)
    assert result.ranking.doc_ids[0] == football  # climbed from near the bottom in one back-to-front pass
    assert [w.start for w in result.windows] == window_starts(len(cands), 4, 2)
    assert sorted(result.ranking.doc_ids) == sorted(c.doc_id for c in cands)
    assert last in result.ranking.doc_ids


def test_lore_unreadable_answer_gets_the_continuation_then_neutral(cands):
    backend = Scripted(lambda p: "I am not sure." if isinstance(p, ChatPrompt) and not p.prefix else "?")
    result = LoreReranker(backend, reasoning=True, logprobs=None).rerank_explained(Query("q", "x"), cands)
    assert [j.source for j in result.judgements] == ["unreadable"] * 3
    assert all(j.label is None and j.expected == 2.5 for j in result.judgements)
    assert backend.calls == 6  # one answer + one continuation per document
    # Equal (neutral) scores keep first-stage order through the tie-break.
    assert result.ranking.doc_ids == ["d02", "d09", "d01"]
    assert result.cost.tokens_in == 600 and result.cost.usd == pytest.approx(3 * 2 * 0.12)


def test_lore_tie_break_keeps_first_stage_order_among_equal_labels(cands):
    labels = {"Paris": "Label: L4", "Berlin": "Label: L2", "Coffee": "Label: L2"}

    def answer(p: ChatPrompt | str) -> str:
        assert isinstance(p, ChatPrompt)
        return next(v for k, v in labels.items() if f"Item title: {k}" in p.messages[-1][1])

    result = LoreReranker(Scripted(answer), reasoning=True, logprobs=None).rerank_explained(Query("q", "x"), cands)
    assert result.ranking.doc_ids == ["d01", "d02", "d09"]  # L4 first; d02 before d09 as in the first stage
    scores = [h.score for h in result.ranking]
    assert 4.0 < scores[0] < 4.001 and 2.0 < scores[2] < scores[1] < 2.001
    assert result.sources == {"parsed": 3}


# ------------------------------------------------------------------------- the real bundled model
def test_llama_cpp_backend_generates_with_logprobs_and_counts(llm):
    prompt = ChatPrompt((("user", "What is the capital of France? Answer in one word."),))
    first, again = llm.generate([prompt, prompt], max_tokens=8, logprobs=5)
    assert first.text.strip().startswith("Paris")
    assert first.text == again.text and first.top_logprobs == again.top_logprobs  # greedy, KV reuse is exact
    assert first.tokens_in > 10 and 1 <= first.tokens_out <= 8
    assert first.tokens_out == len(first.tokens)
    ended = first.finish_reason == "stop"  # ended by end-of-answer: that step's alternatives come last
    assert len(first.top_logprobs) == first.tokens_out + ended
    top = first.top_logprobs[0]
    assert len(top) == 5 and max(top, key=top.__getitem__).strip() == "Paris" and all(v <= 0 for v in top.values())
    plain = llm.generate(["Count: one, two, three,"], max_tokens=12, stop=[","])[0]
    assert "," not in plain.text and plain.finish_reason == "stop"
    assert llm.truncate("word " * 500, 10).count("word") <= 10
    with pytest.raises(InputError):
        llm.generate([prompt], max_tokens=0)


def test_llama_cpp_renders_the_gguf_chat_template(llm):
    # Qwen2.5's ChatML template, written out by hand: its default system message when none is given.
    system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    prompt = ChatPrompt((("user", "Hi"),), prefix="Label:")
    expected = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nLabel:"
    assert llm.render(prompt) == expected
    given = ChatPrompt((("system", "Be brief."), ("user", "Hi")))
    chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert llm.render(given) == chatml
    assert llm.render("plain text") == "plain text"


def test_listwise_on_the_real_model(llm, cands):
    reranker = ListwiseLLMReranker(llm, window=20)
    assert isinstance(reranker, Reranker) and isinstance(reranker, ReportsCost)
    result = reranker.rerank_explained(Query("q", "what is the capital of france"), cands)
    assert sorted(result.ranking.doc_ids) == ["d01", "d02", "d09"]
    assert len(result.windows) == 1 and result.windows[0].answer.count("[") >= 1
    assert result.cost.docs == 3 and result.cost.tokens_in > 50 and result.cost.tokens_out > 0
    ranking, cost = reranker.rerank_with_cost(Query("q", "what is the capital of france"), cands)
    assert ranking == result.ranking and cost.tokens_in == result.cost.tokens_in


def test_lore_on_the_real_model_probabilities_cache_and_cost(llm, cands):
    judge = LoreReranker(llm)  # label-only (constrained) mode: one forward pass per document
    query = Query("q1", "what is the capital of france")
    result = judge.rerank_explained(query, cands)
    assert isinstance(result.ranking, RankedList) and sorted(result.ranking.doc_ids) == ["d01", "d02", "d09"]
    for j in result.judgements:
        assert j.label in (1, 2, 3, 4) and j.source == "logprobs" and not j.cached
        assert j.probs is not None and sum(j.probs) == pytest.approx(1.0)
        assert j.expected == pytest.approx(sum((i + 1) * p for i, p in enumerate(j.probs)))
        assert j.reasoning == f"Label: L{j.label}" and j.tokens_out == 1
    assert result.judged == 3 and result.cached == 0
    assert result.cost.docs == 3 and result.cost.tokens_in > 3 * 100 and result.cost.tokens_out == 3
    # A repeated (head) query is served from the cache: same ranking, no tokens.
    again = judge.rerank_explained(query, cands)
    assert again.ranking == result.ranking
    assert again.judged == 0 and again.cached == 3 and all(j.cached for j in again.judgements)
    assert (again.cost.docs, again.cost.tokens_in, again.cost.tokens_out) == (0, 0, 0)
    # A changed document text is a new cache key.
    changed = [*cands[:2], Candidate("d01", 1.0, "Paris is in France.", "Paris")]
    assert judge.rerank_explained(query, changed).judged == 1


def test_lore_reasoning_mode_explains(llm, cands):
    judge = LoreReranker(llm, reasoning=True, max_reasoning_tokens=40)
    result = judge.rerank_explained(Query("q", "what is the capital of france"), cands[2:])
    (j,) = result.judgements
    assert j.label in (1, 2, 3, 4) and j.source in ("logprobs", "parsed", "continuation")
    assert j.reasoning.startswith("Needs:")  # the model's path construction / following is kept
    assert j.tokens_out > 1


def test_lore_tiers_hard_queries_cache_and_fallback(llm, cands):
    cache = JudgementCache()
    asked: list[str] = []

    def is_hard(query: Query, candidates: Sequence[Candidate]) -> bool:
        asked.append(query.text)
        return "hard" in query.text

    judge = LoreReranker(llm, cache=cache, is_hard=is_hard)
    cands = cands[1:]
    easy = Query("q", "easy capital of france")
    result = judge.rerank_explained(easy, cands)
    assert not result.hard and result.judged == 0 and result.judgements == ()
    assert result.ranking.doc_ids == ["d09", "d01"]  # fallback: first-stage order, no LLM call
    assert result.cost.tokens_in == 0
    # Pre-computing the head query fills the cache; then the same easy query is served from it, free.
    assert judge.precompute([(easy, cands)]) == 2
    served = judge.rerank_explained(easy, cands)
    assert served.cached == 2 and served.judged == 0 and served.cost.tokens_in == 0
    # A second instance sharing the cache (another worker) sees the same judgements.
    other = LoreReranker(llm, cache=cache, is_hard=is_hard)
    assert other.rerank_explained(easy, cands).ranking == served.ranking
    assert judge.rerank_explained(Query("q", "hard capital of france"), cands[1:]).judged == 1
    assert asked[0] == "easy capital of france"


def test_lore_fallback_reranker_for_easy_uncached_queries(llm, cands):
    from twostage_search.rerankers.identity import IdentityReranker

    judge = LoreReranker(llm, is_hard=lambda q, c: False, fallback=IdentityReranker())
    result = judge.rerank_explained(Query("q", "x"), cands)
    assert result.ranking == IdentityReranker().rerank(Query("q", "x"), cands)


def test_lore_is_thread_safe(llm, cands):
    judge = LoreReranker(llm, cache=JudgementCache(0))  # no cache: every call reaches the model
    query = Query("q", "capital city of france")
    expected = judge.rerank(query, cands[1:])
    results: list[RankedList] = []
    threads = [threading.Thread(target=lambda: results.append(judge.rerank(query, cands[1:]))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 2

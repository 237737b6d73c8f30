"""LORE label reading on the bundled model's real tokenisation, and the judgement cache's key.

The label position must be the digit's token (after ``Label: L``), never the token before it, whatever
the alternatives there hold; an answer ended by an end-of-answer token still gives its probabilities
when the backend reports that step. The cache key must change with everything that changes a judgement
and be built without loading a model.
"""

from __future__ import annotations

import math

import pytest

from tests.helpers import need
from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.llm.backends import Completion
from twostage_search.rerankers.llm.lore import Example, LoreReranker, label_position, label_probabilities

need("llama_cpp", "llm")


def pieces(llm, text: str) -> list[str]:
    """``text`` cut into the bundled model's tokens (through the backend's public ``truncate``)."""
    n = 1
    out: list[str] = []
    done = ""
    while done != text:
        cut = llm.truncate(text, n)
        out.append(cut[len(done) :])
        done = cut
        n += 1
    return out


def test_label_position_is_the_digit_token_of_the_real_tokenisation(llm):
    answer = "Needs: type headphones.\nChecks: headphones matched.\nLabel: L3"
    toks = pieces(llm, answer)
    assert "".join(toks) == answer
    digit = len(toks) - 1
    assert toks[digit] == "3" and toks[digit - 1].strip() == "L"  # Qwen splits "L" from the digit
    # The token before the digit carries digit alternatives too: they must not be read.
    tops = [{t: -0.01} for t in toks]
    tops[digit - 1] = {toks[digit - 1]: -0.1, " 4": math.log(0.5), "4": math.log(0.2)}
    tops[digit] = {"3": math.log(0.6), "2": math.log(0.2), "x": math.log(0.1), "1": math.log(0.1)}
    completion = Completion(answer, tokens=tuple(toks), top_logprobs=tuple(tops))
    assert label_position(completion) == digit
    probs = label_probabilities(completion)
    assert probs is not None
    # Hand-computed: digits only, normalised over 0.6 + 0.2 + 0.1.
    assert probs == pytest.approx((0.1 / 0.9, 0.2 / 0.9, 0.6 / 0.9, 0.0))


def test_label_position_with_a_prefilled_prefix_and_an_end_of_answer_step(llm):
    # Label-only mode: the answer is prefilled "Label: L"; the first generated token is the digit.
    toks = pieces(llm, "Label: L2")
    assert toks[-1] == "2"
    only = Completion("2", tokens=("2",), top_logprobs=({"2": math.log(0.7), "3": math.log(0.3)},))
    assert label_probabilities(only, prefix="Label: L") == pytest.approx((0.0, 0.7, 0.3, 0.0))
    # The model's best token was end-of-answer: no token, but the step's alternatives are reported.
    eos = Completion("", tokens=(), top_logprobs=({"<|im_end|>": math.log(0.5), "4": math.log(0.25), "1": -2.0},))
    p1 = math.exp(-2.0)
    assert label_probabilities(eos, prefix="Label: L") == pytest.approx((p1 / (p1 + 0.25), 0, 0, 0.25 / (p1 + 0.25)))
    # Without "L" before it, a digit-bearing position is not the label position.
    assert label_probabilities(Completion(" 3", tokens=(" 3",), top_logprobs=({" 3": -0.1},)), "Label:") is None


def test_label_position_on_a_real_generation(llm):
    from twostage_search.rerankers.llm.backends import ChatPrompt

    prompt = ChatPrompt((("user", "Reply with: Label: L3"),), prefix="Label:")
    (completion,) = llm.generate([prompt], max_tokens=3, logprobs=5)
    i = label_position(completion, "Label:")
    assert i is not None
    token = completion.tokens[i].strip()
    assert token in {"1", "2", "3", "4"} or token.upper() in {"L1", "L2", "L3", "L4"}
    assert "".join(completion.tokens[:i]).strip().upper() in {"L", ""}


class Unloadable:
    """A backend spec that fails when anything tries to load a model."""

    name = "never"
    model = "never"

    def generate(self, *a, **k):  # pragma: no cover - must not be called
        raise AssertionError("a model was used to build a cache key")

    def truncate(self, text: str, max_tokens: int) -> str:  # pragma: no cover
        raise AssertionError("a model was used to build a cache key")


def test_cache_key_covers_what_changes_a_judgement_without_loading_a_model():
    q = Query("q", "red shoes")
    c = Candidate("d1", 1.0, "Red running shoes.", "Shoes")
    base = LoreReranker("llama-cpp").cache_key(q, c)  # a registered name: nothing is loaded
    ex = Example("blue hat", "Blue Hat", "A hat.", "Label: L4")
    ex2 = Example("blue hat", "Blue Cap", "A hat.", "Label: L4")  # differs only in the example's title
    variants = [
        LoreReranker("llama-cpp", examples=[ex]),
        LoreReranker("llama-cpp", examples=[ex2]),
        LoreReranker("llama-cpp", logprobs=None),
        LoreReranker("llama-cpp", reasoning=True),
        LoreReranker("llama-cpp", domain="science"),
        LoreReranker("llama-cpp", max_item_tokens=64),
        LoreReranker("llama-cpp", backend_options={"model": "bundled:other"}),
        LoreReranker("openai"),
        LoreReranker(Unloadable()),
    ]
    keys = [r.cache_key(q, c) for r in variants]
    assert len({base, *keys}) == len(keys) + 1
    same = LoreReranker("llama-cpp")
    assert same.cache_key(q, c) == base
    assert same.cache_key(q, Candidate("other-id", 0.0, c.text, c.title)) == base  # ids don't change a judgement
    assert same.cache_key(q, Candidate("d1", 1.0, c.text + "!", c.title)) != base
    assert same.cache_key(Query("q", "red shoe"), c) != base


def test_the_real_backend_reports_the_end_of_answer_step(llm):
    from twostage_search.rerankers.llm.backends import ChatPrompt

    prompt = ChatPrompt((("user", "Reply with exactly: Label: L3"),), prefix="Label: L")
    (completion,) = llm.generate([prompt], max_tokens=6, logprobs=5)
    assert completion.finish_reason == "stop" and completion.tokens_out == len(completion.tokens) < 6
    # One entry per generated token, then the step whose best token ended the answer.
    assert len(completion.top_logprobs) == len(completion.tokens) + 1
    last = completion.top_logprobs[-1]
    assert max(last, key=last.__getitem__) in {"<|im_end|>", "<|endoftext|>"}
    assert all(v <= 0 for v in last.values()) and sum(math.exp(v) for v in last.values()) <= 1 + 1e-9
    # Continuing the answer from its text, the first step is that same end-of-answer step.
    again = ChatPrompt(prompt.messages, prefix=prompt.prefix + completion.text)
    (rest,) = llm.generate([again], max_tokens=2, logprobs=5)
    assert rest.tokens == () and rest.text == ""
    first = rest.top_logprobs[0]
    assert list(first)[:3] == list(last)[:3]  # best first (the tail may differ: other batching, same text)
    assert [first[t] for t in list(last)[:3]] == pytest.approx([last[t] for t in list(last)[:3]], abs=0.2)

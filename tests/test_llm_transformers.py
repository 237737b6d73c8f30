"""The ``transformers`` LLM backend on the same bundled model (de-quantised from the GGUF once, cached).

Slow on a CPU (the first use converts the GGUF: about a minute on 2 cores; later loads ~20 s), so one
module-scoped backend and a few short generations check it against llama.cpp.
"""

import pytest

from tests.helpers import need
from twostage_search.rerankers.llm.backends import ChatPrompt, create_backend

need("transformers", "llm")
need("gguf", "llm")
need("llama_cpp", "llm")

QUESTION = ChatPrompt((("user", "What is the capital of France? Answer in one word."),))


@pytest.fixture(scope="module")
def hf():
    return create_backend("transformers", threads=2)


@pytest.mark.slow
def test_transformers_backend_agrees_with_llama_cpp(hf, llm):
    local = llm
    out = hf.generate([QUESTION], max_tokens=4, logprobs=3)[0]
    ref = local.generate([QUESTION], max_tokens=4, logprobs=3)[0]
    assert out.text == ref.text and out.text.startswith("Paris")
    assert out.tokens_in == ref.tokens_in and out.tokens_out == ref.tokens_out
    assert out.top_logprobs[0]["Paris"] == pytest.approx(ref.top_logprobs[0]["Paris"], abs=0.1)  # Q4 vs bf16
    # An answer ended by end-of-answer reports that step's alternatives last, as llama.cpp does.
    assert out.finish_reason == ref.finish_reason == "stop"
    assert len(out.top_logprobs) == len(ref.top_logprobs) == out.tokens_out + 1
    last = out.top_logprobs[-1]
    assert max(last, key=last.__getitem__) == max(ref.top_logprobs[-1], key=ref.top_logprobs[-1].__getitem__)
    assert hf.render(QUESTION) == local.render(QUESTION)  # the same chat template


@pytest.mark.slow
def test_transformers_prefill_and_stop(hf):
    labelled = hf.generate([ChatPrompt(QUESTION.messages, prefix="The answer is")], max_tokens=6, stop=["."])[0]
    assert "Paris" in labelled.text and "." not in labelled.text
    assert hf.truncate("one two three four five six", 3).split() == ["one", "two", "three"]

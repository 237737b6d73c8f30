"""An experiment arm whose rerank depth is decided while reranking (policy chunked), through the service."""

from __future__ import annotations

import pytest

from tests.helpers import MS_PER_DOC, CorpusOrderRetriever, need

need("fastapi", "service")
need("onnxruntime", "rerank")

from tests.service_helpers import AUTH, assert_error, search, small_app
from twostage_search.engine.chunked import ChunkedDepth, MarginRule
from twostage_search.service.experiment import ExperimentError, parse_experiment

pytestmark = pytest.mark.slow


def chunked_arm(name: str, policy: str) -> dict:
    return {
        "name": name,
        "weight": 0.5,
        "reranker": {"name": "onnx-cross-encoder", "params": {"batch_size": 4}},
        "depth": 10,
        "policy": "chunked",
        "cost_model": "cost.json",
        "chunked_policy": policy,
    }


def test_chunked_arms_rerank_as_deep_as_their_price_allows(tmp_path, tiny_docs):
    MS_PER_DOC.save(tmp_path / "cost.json")
    # p(change) = 1 always (no chunk can fall a billion below the 3rd score) and a changed top 3 is worth 1:
    # at λ = 0 every chunk is worth reranking, up to max_depth; at λ = 1e6 per ms no chunk is (the arm's
    # cost model, kept current by the observed calls, predicts some positive time for 3 documents)
    always = MarginRule(1e9)
    settings = {"chunk": 3, "first": 3, "top": 3, "max_depth": 9}
    ChunkedDepth(MS_PER_DOC, always, 1.0, lam=0.0, **settings).save(tmp_path / "deep.json")
    ChunkedDepth(MS_PER_DOC, always, 1.0, lam=1e6, **settings).save(tmp_path / "cheap.json")
    arms = [chunked_arm("deep", "deep.json"), chunked_arm("cheap", "cheap.json")]
    with small_app(tmp_path, CorpusOrderRetriever(tiny_docs), arms=arms) as c:
        deep = search(c, k=10, arm="deep", explain=True).json()
        assert deep["rerank_depth"] == 9 and deep["explain"]["policy"] == "chunked"
        assert "chunks 3+3+3" in deep["explain"]["reason"]
        assert [x["docs"] for x in deep["costs"] if x["stage"] == "rerank"] == [9]
        # the reranked 9 lead, the 10th candidate follows in first-stage order
        assert deep["hits"][9]["doc_id"] == tiny_docs[9].doc_id
        cheap = search(c, k=10, arm="cheap", explain=True).json()
        assert cheap["rerank_depth"] == 3 and "not worth its cost" in cheap["explain"]["reason"]
        assert [h["doc_id"] for h in cheap["hits"][3:]] == [d.doc_id for d in tiny_docs[3:10]]
        # a request's own rerank_depth still overrides the policy
        assert search(c, k=10, arm="deep", rerank_depth=2).json()["rerank_depth"] == 2


def test_chunked_arm_configuration_errors(tmp_path, tiny_docs):
    arm = {"name": "a", "weight": 1, "policy": "chunked", "cost_model": "cost.json"}
    with pytest.raises(ExperimentError, match="needs chunked_policy"):
        parse_experiment({"name": "e", "arms": [arm]})
    with pytest.raises(ExperimentError, match="needs cost_model"):
        parse_experiment({"name": "e", "arms": [{"name": "a", "weight": 1, "policy": "chunked"}]})
    with pytest.raises(ExperimentError, match="chunked_policy needs policy 'chunked'"):
        parse_experiment({"name": "e", "arms": [{"name": "a", "weight": 1, "chunked_policy": "p.json"}]})
    parsed = parse_experiment({"name": "e", "arms": [arm | {"chunked_policy": "p.json"}]}, base_dir=tmp_path)
    assert parsed.arms[0].chunked_policy == tmp_path / "p.json"
    # a policy file that is not there: the experiment is refused with a clear message at build time
    MS_PER_DOC.save(tmp_path / "cost.json")
    with small_app(tmp_path, CorpusOrderRetriever(tiny_docs)) as c:
        body = {"name": "e2", "arms": [chunked_arm("a", str(tmp_path / "missing.json")) | {"weight": 1.0}]}
        resp = c.put("/admin/experiment", json=body, headers=AUTH)
        assert_error(resp, 422, "invalid_experiment", "cannot read chunked policy")
        # a listwise arm decides between its window steps from the order alone: a stop model that reads
        # scores is refused when the arm is built, not at its first query (the LLM is not loaded for this)
        ChunkedDepth(MS_PER_DOC, MarginRule(1.0), 1.0).save(tmp_path / "margin.json")
        listwise = chunked_arm("l", "margin.json") | {"weight": 1.0, "reranker": {"name": "listwise-llm"}}
        resp = c.put("/admin/experiment", json={"name": "e3", "arms": [listwise]}, headers=AUTH)
        assert_error(resp, 422, "invalid_experiment", "listwise-llm reranks listwise")

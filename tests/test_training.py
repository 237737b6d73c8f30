"""Cross-encoder training: hard-negative mining and a real (tiny) fine-tuning run."""

import json

import pytest

from twostage_search.engine.errors import InputError
from twostage_search.rerankers.cross_encoder import CrossEncoderReranker
from twostage_search.rerankers.training import Pair, TrainConfig, mine_pairs, train_cross_encoder


def test_mine_pairs_positives_and_seeded_hard_negatives(lucene_retriever, tiny_docs, tiny_queries, tiny_qrels):
    corpus = {d.doc_id: d for d in tiny_docs}
    pairs = mine_pairs(lucene_retriever, tiny_queries, tiny_qrels, corpus, negatives=2, depth=5, seed=1)
    assert pairs == mine_pairs(lucene_retriever, tiny_queries, tiny_qrels, corpus, negatives=2, depth=5, seed=1)
    positives = [p for p in pairs if p.label == 1.0]
    negatives = [p for p in pairs if p.label == 0.0]
    assert len(positives) == len(tiny_queries) and len(negatives) == 2 * len(tiny_queries)
    relevant_text = {corpus[d].full_text for q in tiny_qrels.values() for d in q}
    assert all(p.passage in relevant_text for p in positives)
    by_query = {q.text: q.query_id for q in tiny_queries}
    for p in negatives:  # never a judged-relevant document of its own query
        assert p.passage not in {corpus[d].full_text for d in tiny_qrels[by_query[p.query]]}


def test_mine_pairs_leaves_excluded_documents_out_of_every_pair(lucene_retriever, tiny_docs, tiny_queries, tiny_qrels):
    corpus = {d.doc_id: d for d in tiny_docs}
    banned = {"d01", "d02", "d09"}  # d01 is q1's only relevant document: q1 has no positive left
    pairs = mine_pairs(
        lucene_retriever, tiny_queries, tiny_qrels, corpus, negatives=11, depth=12, random_negatives=3, exclude=banned
    )
    banned_text = {corpus[d].full_text for d in banned}
    assert not any(p.passage in banned_text for p in pairs)
    assert "what is the capital of france" not in {p.query for p in pairs}
    assert sorted(p.passage for p in pairs if p.label == 1.0) == sorted(
        corpus[d].full_text for d in ("d03", "d04", "d05", "d07", "d10")
    )
    for q in tiny_queries[1:]:  # negatives are still drawn, each document at most once per query
        mine = [p.passage for p in pairs if p.query == q.text and p.label == 0.0]
        assert 3 <= len(mine) == len(set(mine)) <= 12 - 3 - 1


def test_train_writes_a_loadable_cross_encoder(tmp_path, tiny_docs):
    pairs = [
        Pair("capital of france", tiny_docs[0].full_text, 1.0),
        Pair("capital of france", tiny_docs[8].full_text, 0.0),
    ]
    out = train_cross_encoder(pairs * 4, tmp_path / "ce", TrainConfig(batch_size=4, max_length=64))
    record = json.loads((out / "training.json").read_text())
    assert record["pairs"] == 8 and record["positives"] == 4
    assert not (out / "_checkpoints").exists()
    reranker = CrossEncoderReranker(str(out), max_length=64)
    assert len(reranker.score("capital of france", ["Paris", "coffee"])) == 2
    with pytest.raises(InputError):
        train_cross_encoder([], tmp_path / "empty")


def test_cli_exclusion_applies_to_mined_pairs_only(tmp_path, capsys):
    from twostage_search.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "q", "passage": "p", "label": 1}\n')
    args = ["train-cross-encoder", "--pairs", str(pairs), "--exclude-relevant-to", "test", "--out", str(tmp_path / "m")]
    code = main(args)
    assert code == 2 and "--exclude-relevant-to" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()

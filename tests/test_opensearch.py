"""The ``opensearch`` backend end to end through opensearch-py, against a real local OpenSearch node or $OPENSEARCH_URL.

Fault cases (a server down mid-ingest, rejections, outages, bad credentials) are in test_opensearch_faults.py.
"""

from __future__ import annotations

import json
import logging
import os

import pytest

from tests.helpers import TINY, need, use_osmem
from twostage_search import indexes
from twostage_search.cli import main
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Document, Query, SparseVector

need("opensearchpy", "opensearch")
need("pydantic_settings", "opensearch")

from twostage_search.indexes.opensearch import (
    MAX_CLAUSES,
    OpenSearchIndex,
    escape_term,
    resolve_settings,
    unescape_term,
)
from twostage_search.indexes.opensearch.client import make_client
from twostage_search.indexes.opensearch.ingest import alias_targets, all_ids, bulk_index
from twostage_search.indexes.opensearch.mapping import stored_impact
from twostage_search.indexes.opensearch.settings import OpenSearchSettings
from twostage_search.indexes.pruning import measure_pruning

# Fast back-off for the fault tests (the defaults wait up to 30 s between retries).
FAST = {"retry_backoff": 0.02, "max_backoff": 0.1}


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def os_retriever(os_index, encoder):
    return os_index.retriever(encoder)


def _build(docs, path, encoder, url, alias, **kw):
    return OpenSearchIndex.build(docs, path, encoder=encoder, progress=False, hosts=[url], index_name=alias, **kw)


def _brute_force(encoder, docs, query, scale):
    """Expected (doc_id, integer score) by an independent dict dot product of the quantised vectors."""
    doc_vecs = [v.quantize(scale) for v in encoder.encode_docs([d.full_text for d in docs])]
    (qv,) = encoder.encode_queries([query.text])
    q = qv.quantize(scale)
    scores = [(d.doc_id, sum(w * dv.get(t, 0) for t, w in q.items())) for d, dv in zip(docs, doc_vecs, strict=True)]
    return sorted(((d, s) for d, s in scores if s > 0), key=lambda ds: (-ds[1], ds[0]))


# ------------------------------------------------------------------------------ same as embedded
def test_rankings_equal_the_embedded_index(os_retriever, lucene_retriever, tiny_queries, tiny_docs):
    for q in tiny_queries:
        got = os_retriever.retrieve(q, k=len(tiny_docs))
        expected = lucene_retriever.retrieve(q, k=len(tiny_docs))
        assert got.doc_ids == expected.doc_ids, q.text
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-9)
        for k in (1, 3, 10):
            assert os_retriever.retrieve(q, k).doc_ids == expected.doc_ids[:k]


def test_exact_integer_scores_equal_brute_force(os_index, os_retriever, encoder, tiny_docs, tiny_queries):
    for q in tiny_queries:
        (qv,) = encoder.encode_queries([q.text])
        got = os_retriever.search_impacts(qv.quantize(os_index.scale), k=len(tiny_docs))
        assert got == _brute_force(encoder, tiny_docs, q, os_index.scale), q.text


def test_text_and_title_come_from_the_cluster(os_retriever, tiny_docs):
    by_id = {d.doc_id: d for d in tiny_docs}
    for hit in os_retriever.retrieve(Query("q", "what causes ocean tides"), k=5):
        assert (hit.title, hit.text) == (by_id[hit.doc_id].title, by_id[hit.doc_id].text)


def test_lookup_query_side_ranks_as_the_embedded_index(os_index, built_indexes, tiny_queries, tmp_path, monkeypatch):
    """``query_side="lookup"`` on the cluster: the build keeps the document frequencies; an index without them
    counts them on the cluster. Both are the embedded index's, so the rankings (ids, scores, texts) are
    ``impact-csc``'s lookup rankings."""
    import shutil

    csc = built_indexes["impact-csc"]
    kept = json.loads((os_index.path / "doc_freqs.json").read_text())
    assert kept == {"index": os_index.meta["opensearch"]["index"], "doc_freqs": csc.doc_freqs()}
    copy = tmp_path / "copy"
    shutil.copytree(os_index.path, copy)  # the session's index directory stays as built
    (copy / "doc_freqs.json").unlink()  # as an index built before the file existed
    # the whole vocabulary takes ~30k counts: count the index's terms and some it lacks
    absent = ["zebra", "##qq", "u.s", "%"]
    vocabulary = lambda model: [*csc.doc_freqs(), *absent]  # noqa: E731
    monkeypatch.setattr("twostage_search.indexes.opensearch.index.model_vocabulary", vocabulary)
    index = OpenSearchIndex.open(copy, hosts=os_index.settings.hosts)
    assert index.doc_freqs() == csc.doc_freqs()
    assert json.loads((copy / "doc_freqs.json").read_text()) == kept
    got, want = index.retriever(query_side="lookup"), csc.retriever(query_side="lookup")
    for q in tiny_queries:
        expected = [(h.doc_id, h.score, h.text) for h in want.retrieve(q, 100)]
        assert [(h.doc_id, h.score, h.text) for h in got.retrieve(q, 100)] == expected, q.text
    with pytest.raises(InputError, match="query_side"):
        index.retriever(query_side="lookups")


def test_meta_json_and_load(os_index, tiny_docs):
    meta = json.loads((os_index.path / "meta.json").read_text())
    assert meta["backend"] == "opensearch"
    assert meta["doc_count"] == len(tiny_docs) == os_index.count()
    assert meta["scale"] == 100.0 and meta["encoder"]["name"] == "splade"
    assert meta["opensearch"]["index"].startswith(meta["opensearch"]["alias"] + "--")
    assert meta["opensearch"]["escape"] == "percent-v1"
    assert sorted(p.name for p in os_index.path.iterdir()) == ["doc_freqs.json", "meta.json"]
    loaded = indexes.load(os_index.path)
    assert isinstance(loaded, OpenSearchIndex) and len(loaded) == len(tiny_docs)


def test_server_sort_and_client_tie_groups_agree(tmp_path, encoder, opensearch_url, name):
    # Identical texts tie on every score; ids are inserted out of order.
    ids = ["e", "c", "a", "d", "b", "f"]
    index = _build(
        [Document(i, "the moon orbits the earth") for i in ids], tmp_path / "ties", encoder, opensearch_url, name()
    )
    query = Query("q", "moon")
    for server_sort in (True, False):
        retriever = index.retriever(encoder, server_sort=server_sort)
        assert retriever.retrieve(query, k=10).doc_ids == sorted(ids)
        for k in (1, 2, 3, 5):
            assert retriever.retrieve(query, k=k).doc_ids == sorted(ids)[:k]


# ------------------------------------------------------------------------------- feature names
@pytest.mark.parametrize("term", [".", "##s", "%", "%2E", "%25", "a.b.c", "u.s.", "100%.", "ü", "[CLS]"])
def test_feature_name_escape_round_trips(term):
    escaped = escape_term(term)
    assert "." not in escaped
    assert unescape_term(escaped) == term


def test_terms_with_dots_are_indexed_and_searched_exactly(tmp_path, encoder, opensearch_url, name):
    docs = [
        Document("p1", "e.g. the U.S. economy grew 3.5 % in Q.2 ...", "Dots"),
        Document("p2", "Percent signs: 100% and 50 %.", "Percent"),
        Document("p3", "The moon orbits the earth.", "Moon"),
    ]
    doc_terms = {t for v in encoder.encode_docs([d.full_text for d in docs]) for t in v.quantize(100)}
    assert "." in doc_terms or any("." in t for t in doc_terms)  # the test would be vacuous otherwise
    index = _build(docs, tmp_path / "dots", encoder, opensearch_url, name())
    stored = index.client.get(index=index.alias, id="p1")["_source"]["splade"]
    assert all("." not in f for f in stored)
    retriever = index.retriever(encoder)
    for text in ("U.S. economy e.g.", "100% percent", "3.5 . ..."):
        query = Query("q", text)
        (qv,) = encoder.encode_queries([text])
        assert retriever.search_impacts(qv.quantize(100), 10) == _brute_force(encoder, docs, query, 100)


# ---------------------------------------------------------------------- ingest: idempotent, alias
def test_re_ingest_by_doc_id_never_duplicates(os_index, tiny_docs):
    client, physical = os_index.client, os_index.meta["opensearch"]["index"]
    hits = client.search(index=physical, body={"size": 100, "query": {"match_all": {}}})["hits"]["hits"]
    actions = [{"_op_type": "index", "_index": physical, "_id": h["_id"], "_source": h["_source"]} for h in hits]
    assert len(actions) == len(tiny_docs)
    for _ in range(2):  # the whole corpus again, twice (as a retried or resumed bulk would)
        assert bulk_index(client, actions, os_index.settings) == len(tiny_docs)
    client.indices.refresh(index=physical)
    assert os_index.count() == len(tiny_docs)
    assert sorted(all_ids(client, physical)) == sorted(d.doc_id for d in tiny_docs)


def test_rebuild_swaps_the_alias_and_drops_the_old_index(tmp_path, encoder, tiny_docs, opensearch_url, name):
    path, alias = tmp_path / "idx", name()
    first = _build(tiny_docs[:4], path, encoder, opensearch_url, alias)
    old_physical = first.meta["opensearch"]["index"]
    reader = first.retriever(encoder)  # opened before the rebuild: reads through the alias
    assert reader.retrieve(Query("q", "ocean tides moon"), k=1).doc_ids != ["d10"]

    second = _build(tiny_docs, path, encoder, opensearch_url, alias)
    new_physical = second.meta["opensearch"]["index"]
    assert new_physical != old_physical and second.meta["opensearch"]["replaced"] == [old_physical]
    assert not second.client.indices.exists(index=old_physical)
    assert alias_targets(second.client, alias) == [new_physical]
    assert reader.retrieve(Query("q", "ocean tides moon"), k=1).doc_ids == ["d10"]
    assert len(indexes.load(path)) == len(tiny_docs) == second.count()


def _docs_then_fail(docs):
    yield from docs
    raise RuntimeError("crash while encoding")


def test_failed_rebuild_keeps_the_live_index_then_resumes(tmp_path, encoder, tiny_docs, opensearch_url, name):
    path, alias = tmp_path / "idx", name()
    live = _build(tiny_docs[:4], path, encoder, opensearch_url, alias)
    meta_before = (path / "meta.json").read_bytes()
    live_physical = live.meta["opensearch"]["index"]
    assert json.loads((path / "doc_freqs.json").read_text())["index"] == live_physical

    with pytest.raises(RuntimeError, match="crash while encoding"):
        _build(_docs_then_fail(tiny_docs[:6]), path, encoder, opensearch_url, alias, chunk_size=2, threads=1)
    assert (path / "meta.json").read_bytes() == meta_before
    assert alias_targets(live.client, alias) == [live_physical]
    assert live.count() == 4
    partial = [n for n in live.client.indices.get(index=f"{alias}--*") if n != live_physical]
    assert len(partial) == 1

    # The corpus changed meanwhile: d01 is gone and d03's text is new; both must be reconciled.
    changed = Document("d03", "Plants turn sunlight into sugar and oxygen.", "Photosynthesis (short)")
    corpus = [changed if d.doc_id == "d03" else d for d in tiny_docs[1:]]
    resumed = _build(corpus, path, encoder, opensearch_url, alias, chunk_size=2, threads=1)
    assert resumed.meta["opensearch"]["index"] == partial[0]
    assert resumed.meta["opensearch"]["resumed_docs"] == 4  # d02, d04, d05, d06 were not re-encoded
    # so the build cannot know every document's terms: a lookup counts them on the cluster instead
    assert sorted(p.name for p in path.iterdir()) == ["meta.json"]
    assert resumed.count() == len(corpus) == resumed.meta["doc_count"]
    assert sorted(all_ids(resumed.client, resumed.alias)) == sorted(d.doc_id for d in corpus)
    assert not resumed.client.indices.exists(index=live_physical)
    top = resumed.retriever(encoder).retrieve(Query("q", "plants sunlight oxygen"), k=1)
    assert top[0].doc_id == "d03" and top[0].text == changed.text


# ----------------------------------------------------------------------------- settings, queries
def test_settings_from_the_environment(monkeypatch):
    monkeypatch.delenv("OPENSEARCH_URL", raising=False)
    monkeypatch.setenv("TWOSTAGE_OPENSEARCH_HOSTS", "http://a:9200, https://b:9200")
    monkeypatch.setenv("TWOSTAGE_OPENSEARCH_PASSWORD", "pw")
    monkeypatch.setenv("TWOSTAGE_OPENSEARCH_QUERY_TOP_N", "64")
    s = OpenSearchSettings()
    assert s.hosts == ["http://a:9200", "https://b:9200"] and s.query_top_n == 64
    assert "pw" not in repr(s) and s.password is not None and s.password.get_secret_value() == "pw"
    monkeypatch.delenv("TWOSTAGE_OPENSEARCH_HOSTS")
    monkeypatch.setenv("OPENSEARCH_URL", "https://admin:x%40y@h:9200/")
    monkeypatch.delenv("TWOSTAGE_OPENSEARCH_PASSWORD")
    s = OpenSearchSettings()
    assert s.hosts == ["https://h:9200"] and s.user == "admin"
    assert s.password is not None and s.password.get_secret_value() == "x@y"  # percent-decoded
    assert resolve_settings(hosts=["h:1"]).hosts == ["http://h:1"]
    with pytest.raises(InputError, match="invalid OpenSearch settings: timeout"):
        resolve_settings(timeout=-1)


def test_query_pruning_keeps_the_top_terms_and_reports_the_loss(os_index, os_retriever, encoder, tiny_queries):
    full = measure_pruning(os_retriever, tiny_queries, top_n=1000, k=10)
    assert full.mean_overlap == full.min_overlap == 1.0 and full.mean_kept_weight == 1.0
    pruned = measure_pruning(os_retriever, tiny_queries, top_n=3, k=10)
    assert pruned.mean_kept_terms == 3 and pruned.mean_terms > 3
    assert 0 < pruned.mean_kept_weight < 1 and 0 < pruned.mean_overlap < 1
    print(f"\npruning to 3 terms: {pruned}")

    top3 = os_index.retriever(encoder, query_top_n=3)
    for q in tiny_queries:
        (qv,) = encoder.encode_queries([q.text])
        assert top3.query_impacts(qv) == qv.top(3).quantize(os_index.scale)
        assert top3.retrieve(q, 10).doc_ids == [d for d, _ in os_retriever.search_impacts(top3.query_impacts(qv), 10)]
        assert top3.retrieve(q, 1).doc_ids == os_retriever.retrieve(q, 1).doc_ids  # the head survives


def test_queries_longer_than_the_clause_limit_are_pruned(os_retriever, caplog):
    vector = SparseVector.from_dict({f"t{i}": 1.0 + i / 10_000 for i in range(MAX_CLAUSES + 50)})
    with caplog.at_level(logging.WARNING, logger="twostage_search.indexes.opensearch"):
        impacts = os_retriever.query_impacts(vector)
    assert len(impacts) == MAX_CLAUSES and "pruned from 1074 to 1024 terms" in caplog.text
    assert os_retriever.search_impacts(impacts, 5) == []  # 1024 clauses are accepted


def test_neural_sparse_where_supported_else_rank_feature(os_index, os_retriever, encoder, tiny_queries, caplog):
    retriever = os_index.retriever(encoder, query_mode="neural_sparse")
    with caplog.at_level(logging.WARNING, logger="twostage_search.indexes.opensearch"):
        got = [retriever.retrieve(q, 12) for q in tiny_queries]
    assert got == [os_retriever.retrieve(q, 12) for q in tiny_queries]
    if retriever.query_mode == "rank_feature":
        assert caplog.text.count("does not support neural_sparse") == 1  # detected once, then remembered
    if not os.environ.get("OPENSEARCH_URL"):  # the local node has no neural-search plugin: 400
        assert retriever.query_mode == "rank_feature"


# ------------------------------------------------------------------------------------------- CLI
def test_cli_index_and_search(tmp_path, opensearch_url, name, capsys):
    path = tmp_path / "idx"
    argv = ["index", str(TINY / "corpus.jsonl"), "--index", str(path), "--backend", "opensearch"]
    assert main([*argv, "--opensearch-url", opensearch_url, "--opensearch-index", name(), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(path), "what is the capital of france", "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["doc_id"] == "d01" and "Paris" in hits[0]["text"]


def test_cli_opensearch_flags_need_the_backend(tmp_path, capsys):
    argv = ["index", str(TINY / "corpus.jsonl"), "--index", str(tmp_path / "i"), "--opensearch-url", "http://x:1"]
    assert main(argv) == 2
    assert "apply only to --backend opensearch" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()


# ------------------------------------------------------------------------- FeatureField precision
def test_rank_features_keep_nine_significant_bits(opensearch_url, name):
    """The server scores with the stored value: integers up to 511 exact, above that truncated to 9 bits."""
    if use_osmem():
        pytest.skip("osmem-server stores rank_features exactly; this is about real OpenSearch")
    client = make_client(resolve_settings(hosts=[opensearch_url]))
    index = name()
    client.indices.create(index=index, body={"mappings": {"properties": {"f": {"type": "rank_features"}}}})
    # Expected by hand from the float32 bits: 513 = 0b1000000001 (10 bits) → 512; 1023 → 1022; 2047 → 2044.
    values = {"a": 511, "b": 512, "c": 513, "d": 1023, "e": 2047}
    expected = {"a": 511.0, "b": 512.0, "c": 512.0, "d": 1022.0, "e": 2044.0}
    for doc_id, v in values.items():
        client.index(index=index, id=doc_id, body={"f": {"x": v}}, refresh=True)
    body = {"size": 10, "query": {"rank_feature": {"field": "f.x", "linear": {}}}}
    got = {h["_id"]: h["_score"] for h in client.search(index=index, body=body)["hits"]["hits"]}
    assert got == expected
    assert {d: stored_impact(v) for d, v in values.items()} == expected
    client.indices.delete(index=index)


def test_impacts_above_511_are_refused_at_build(tmp_path, encoder, tiny_docs, opensearch_url, name):
    # SPLADE weights above 0.512 exist in the tiny corpus, so scale 1000 makes impacts above 511.
    assert max(max(v.weights) for v in encoder.encode_docs([d.full_text for d in tiny_docs])) > 0.512
    alias = name()
    with pytest.raises(InputError, match="rank_features stores integers above 511 inexactly"):
        _build(tiny_docs, tmp_path / "idx", encoder, opensearch_url, alias, scale=1000.0)
    assert not (tmp_path / "idx").exists()
    client = make_client(resolve_settings(hosts=[opensearch_url]))
    assert not client.indices.get(index=f"{alias}*")  # the partial index was deleted
    index = _build(tiny_docs, tmp_path / "idx", encoder, opensearch_url, alias, scale=1000.0, impact_check="warn")
    assert index.meta["max_impact"] > 511 and index.meta["inexact_impacts"] > 0


# ---------------------------------------------------------------------------------------- hybrid
def test_hybrid_score_is_bm25_plus_weighted_splade(os_index, os_retriever, encoder, tiny_queries, tiny_docs):
    from twostage_search.indexes.opensearch.hybrid import HybridRetriever

    n = len(tiny_docs)
    splade_only = HybridRetriever(os_index, encoder, bm25_weight=0.0, splade_weight=1.0)
    bm25_only = HybridRetriever(os_index, encoder, bm25_weight=1.0, splade_weight=0.0)
    hybrid = HybridRetriever(os_index, encoder, bm25_weight=1.0, splade_weight=3.0)
    for q in tiny_queries:
        expected = os_retriever.retrieve(q, n)
        got = splade_only.retrieve(q, n)
        assert got.doc_ids == expected.doc_ids, q.text
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], rel=1e-6)
        # BM25 alone: the same as a plain multi_match query sent by hand
        body = {"size": n, "query": {"multi_match": {"query": q.text, "fields": ["title", "text"]}}}
        raw = os_index.client.search(index=os_index.alias, body=body)["hits"]["hits"]
        bm25 = {h["_id"]: h["_score"] for h in raw}
        assert {h.doc_id: h.score for h in bm25_only.retrieve(q, n)} == pytest.approx(bm25, rel=1e-6)
        splade = {h.doc_id: h.score for h in expected}
        combined = {d: bm25.get(d, 0.0) + 3.0 * splade.get(d, 0.0) for d in bm25.keys() | splade.keys()}
        assert {h.doc_id: h.score for h in hybrid.retrieve(q, n)} == pytest.approx(combined, rel=1e-5)
    with pytest.raises(InputError):
        HybridRetriever(os_index, encoder, bm25_weight=0.0, splade_weight=0.0)

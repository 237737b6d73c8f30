"""The inference-free SPLADE query side (``query_side="lookup"``): a token table times the index's IDF.

Expected weights and scores are worked out by hand (``math.log`` of the toy document frequencies), never with
the code under test; the bundled table is checked against a plain Python dot product on the tiny corpus.
"""

import json
import math

import pytest

from tests.helpers import need

need("scipy", "impact")
need("tokenizers", "splade")

from twostage_search.engine.encoders import SparseEncoder
from twostage_search.engine.errors import InputError
from twostage_search.engine.splade_lookup import (
    LookupQuerySide,
    QueryOnlyDocSide,
    TokenTable,
    mean_token_weights,
)
from twostage_search.engine.types import Document, Query, SparseVector
from twostage_search.indexes.impact_csc import ImpactCscIndex

MODEL = "bundled:splade-tiny"  # its tokenizer splits the queries; these words are single word pieces


class Spelled:
    """A side encoder whose texts spell their vectors: ``"cat:3 dog:1"``."""

    def encode(self, texts):
        pairs = [(p.split(":") for p in text.split()) for text in texts]
        return [SparseVector.from_dict({t: float(w) for t, w in pair}) for pair in pairs]

    def config(self):
        return {"kind": "spelled"}


def toy_encoder(model=MODEL):
    return SparseEncoder("spelled", Spelled(), Spelled(), {"model": model, "query_max_length": 64, "query_top_n": None})


# df: cat 2, dog 2, fish 1 of N = 4 documents
DOCS = [Document("d1", "cat:3"), Document("d2", "dog:2 cat:1"), Document("d3", "fish:4"), Document("d4", "dog:1")]


@pytest.fixture
def toy(tmp_path):
    index = ImpactCscIndex.build(DOCS, tmp_path / "toy", encoder=toy_encoder(), scale=100, progress=False)
    table = TokenTable(MODEL, {"cat": 2.0, "dog": 1.0, "bird": 3.0}, 0.5, {}).save(tmp_path / "table")
    return index, table


def test_weights_are_table_times_idf_power(toy):
    index, table = toy
    assert index.doc_freqs() == {"cat": 2, "dog": 2, "fish": 1}
    retriever = index.retriever(query_side="lookup", query_table=str(table), idf_power=1.0)
    # "bird" is in the table but not in the index; "fish" is not in the table: the fallback 0.5
    (vector,) = retriever.encoder.encode_queries(["cat dog fish bird cat"])
    want = {"cat": 2.0 * math.log(4 / 2), "dog": 1.0 * math.log(4 / 2), "fish": 0.5 * math.log(4 / 1)}
    assert set(vector.terms) == set(want)
    for term, weight in zip(vector.terms, vector.weights, strict=True):
        assert weight == pytest.approx(want[term], rel=1e-12)
    # quantised with scale 100: cat 139, dog 69, fish 69; documents: cat 300 (d1), dog 200 + cat 100 (d2) ...
    ranking = retriever.retrieve(Query("q", "cat dog fish bird"), 10)
    assert [(h.doc_id, round(h.score * 100**2)) for h in ranking] == [
        ("d1", 139 * 300),
        ("d2", 69 * 200 + 139 * 100),
        ("d3", 69 * 400),
        ("d4", 69 * 100),
    ]
    assert ranking[0].text == "cat:3"


def test_idf_power_zero_uses_the_table_alone(toy):
    index, table = toy
    retriever = index.retriever(query_side="lookup", query_table=str(table), idf_power=0.0)
    # query impacts cat 200, dog 100, fish 50 against the documents' impacts (scale 100)
    assert retriever.search_impacts(retriever.encoder.encode_queries(["cat dog fish"])[0].quantize(100), 10) == [
        ("d1", 200 * 300),
        ("d2", 100 * 200 + 200 * 100),
        ("d3", 50 * 400),
        ("d4", 100 * 100),
    ]


def test_a_term_in_every_document_weighs_nothing_and_pieces_count_once():
    table = TokenTable(MODEL, {"cat": 2.0, "dog": 1.0}, 1.0, {})
    side = LookupQuerySide(table, {"cat": 1, "dog": 4}, 4, idf_power=0.5)
    (vector,) = side.encode(["dog cat dog cat"])
    assert vector.terms == ("cat",) and vector.weights[0] == pytest.approx(2.0 * math.log(4) ** 0.5, rel=1e-12)
    assert side.encode(["dog"])[0].terms == () and side.encode([""])[0].terms == ()
    assert side.config()["kind"] == "token-lookup-idf"


def test_max_length_and_top_n():
    table = TokenTable(MODEL, {"cat": 1.0, "dog": 2.0, "fish": 3.0}, 1.0, {})
    freqs = {"cat": 1, "dog": 1, "fish": 1}
    assert LookupQuerySide(table, freqs, 2, max_length=2).encode(["cat dog fish"])[0].terms == ("dog", "cat")
    assert LookupQuerySide(table, freqs, 2, top_n=1).encode(["cat dog fish"])[0].terms == ("fish",)


def test_bad_settings_are_input_errors(toy, tmp_path):
    index, table = toy
    with pytest.raises(InputError, match="query_side"):
        index.retriever(query_side="bogus")
    with pytest.raises(InputError, match="is for bundled:splade-tiny"):  # a given encoder names the model
        index.retriever(toy_encoder("some/model"), query_side="lookup", query_table=str(table))
    with pytest.raises(InputError, match="idf_power"):
        index.retriever(query_side="lookup", query_table=str(table), idf_power=-1)
    other = ImpactCscIndex.build(DOCS, tmp_path / "other", encoder=toy_encoder("some/model"), progress=False)
    with pytest.raises(InputError, match="query_table"):
        other.retriever(query_side="lookup")  # no bundled table for that model
    with pytest.raises(InputError, match="is for bundled:splade-tiny"):
        other.retriever(query_side="lookup", query_table=str(table))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        TokenTable.load(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text(json.dumps({"model": MODEL, "fallback": 1.0, "weights": {}}))
    with pytest.raises(InputError, match="at least one"):
        TokenTable.load(tmp_path / "empty.json")
    with pytest.raises(InputError, match="queries only"):
        QueryOnlyDocSide().encode(["a document"])


def test_table_round_trip_and_median_fallback(tmp_path):
    table = TokenTable.from_weights(MODEL, {"a": 1.0, "b": 4.0, "c": 2.0}, {"texts": 3})
    assert table.fallback == 2.0
    loaded = TokenTable.load(table.save(tmp_path / "t").parent)  # the directory or the file
    assert (loaded.model, loaded.weights, loaded.fallback, loaded.about) == (MODEL, table.weights, 2.0, {"texts": 3})
    assert (tmp_path / "t" / "table.json").read_bytes() == table.save(tmp_path / "u").read_bytes()


def test_mean_token_weights_by_hand():
    vocab = ["x", "y", "z"]
    rows = {"x y": [1.0, 3.0, 9.0], "y y": [0.0, 5.0, 9.0], "z": [0.0, 0.0, 2.0]}
    ids = {"x y": [0, 1], "y y": [1, 1], "z": [2]}
    got = mean_token_weights(rows, lambda texts: [rows[t] for t in texts], vocab, ids.__getitem__, batch_size=2)
    # x: 1 (one text); y: (3 + 5) / 2, counted once in "y y"; z: 2 (the 9s are in texts without z)
    assert got == {"x": 1.0, "y": 4.0, "z": 2.0}


def test_bundled_table_on_the_tiny_corpus_equals_a_python_dot_product(built_indexes, tiny_queries):
    index = built_indexes["impact-csc"]
    retriever = index.retriever(query_side="lookup")
    assert retriever.encoder.query.table.model == MODEL and len(retriever.encoder.query.table.weights) > 1000
    rows = {d: i for i, d in enumerate(index.doc_ids)}
    postings = index.postings.tocsc()
    found = 0
    for q in tiny_queries:
        (vector,) = retriever.encoder.encode_queries([q.text])
        query = vector.quantize(index.scale)
        assert set(query) <= set(index.terms)
        scores = {}
        for doc_id, row in rows.items():
            column = postings[:, [row]].toarray().ravel()
            scores[doc_id] = sum(w * int(column[index.term_rows[t]]) for t, w in query.items())
        want = sorted(((d, s) for d, s in scores.items() if s > 0), key=lambda h: (-h[1], h[0]))
        ranking = retriever.retrieve(q, 100)
        assert [(h.doc_id, h.score) for h in ranking] == [(d, s / index.scale**2) for d, s in want], q.text
        found += len(ranking)
    assert found > 0


def test_open_retriever_checks_the_options(toy):
    from twostage_search import indexes

    index, table = toy
    retriever = indexes.open_retriever(index, {"query_side": "lookup", "query_table": str(table)})
    assert isinstance(retriever.encoder.query, LookupQuerySide)
    with pytest.raises(InputError, match=r"impact-csc retrievers take no option ef_search \(they take: .*query_side"):
        indexes.open_retriever(index, {"ef_search": 5})


def test_cli_search_with_a_retriever_option(built_indexes, capsys):
    from twostage_search.cli import main

    path = str(built_indexes["impact-csc"].path)
    capsys.readouterr()
    args = ["search", "--index", path, "what is the capital of france", "--k", "2", "--json"]
    assert main([*args, "--retriever-option", "query_side=lookup"]) == 0
    lookup = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    model = json.loads(capsys.readouterr().out)
    assert len(lookup["hits"]) == 2 and len(model["hits"]) == 2
    for bad in ("ef_search=3", "query_side"):
        assert main([*args, "--retriever-option", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("twostage: error: ") and bad.split("=")[0] in err


def test_service_setting_opens_the_lookup(built_indexes, monkeypatch):
    from twostage_search.service.routes.admin import open_index_at
    from twostage_search.service.settings import Settings

    monkeypatch.setenv("TWOSTAGE_RETRIEVER_OPTIONS", '{"query_side": "lookup", "idf_power": 0.5}')
    settings = Settings(index=built_indexes["impact-csc"].path)
    assert settings.retriever_options == {"query_side": "lookup", "idf_power": 0.5}
    retriever, _ = open_index_at(settings)
    assert isinstance(retriever.encoder.query, LookupQuerySide) and retriever.encoder.query.idf_power == 0.5


def test_lucene_impact_lookup_ranks_as_impact_csc(built_indexes, tiny_queries):
    lucene = built_indexes["lucene-impact"]
    csc = built_indexes["impact-csc"]
    assert lucene.doc_freqs() == csc.doc_freqs()
    a, b = lucene.retriever(query_side="lookup"), csc.retriever(query_side="lookup")
    for q in tiny_queries:
        want, got = b.retrieve(q, 100), a.retrieve(q, 100)
        assert [(h.doc_id, h.score, h.text) for h in got] == [(h.doc_id, h.score, h.text) for h in want], q.text
    with pytest.raises(InputError, match="query_side"):
        lucene.retriever(query_side="Lookup")


def test_bench_system_search_options(built_indexes, tmp_path):
    from tests.helpers import TINY
    from twostage_search.benchmarks.runner import BenchSettings, run_benchmark

    path = built_indexes["impact-csc"].path
    common = dict(dataset=TINY, out=tmp_path / "o", index_cache=tmp_path / "c", reuse_dir=None, warmup=0)
    system = tmp_path / "s.yaml"
    system.write_text(f"name: L\nfirst_stage: {{backend: impact-csc, index: {path}, search: {{query_side: lookup}}}}\n")
    row = run_benchmark(BenchSettings(systems=(system,), progress=False, plots=False, **common)).rows[0]
    assert row.index == f"{path} (given)" and row.quality["nDCG@10"] > 0
    system.write_text(f"name: L\nfirst_stage: {{backend: impact-csc, index: {path}, search: {{ef_search: 1}}}}\n")
    with pytest.raises(InputError, match="impact-csc retrievers take no option ef_search"):
        run_benchmark(BenchSettings(systems=(system,), progress=False, plots=False, **common))


def test_the_example_system_and_a_run_with_search_options(tmp_path):
    from pathlib import Path

    from twostage_search.benchmarks.configs import load_system

    system = load_system(Path(__file__).parents[1] / "benchmarks" / "systems" / "splade-lookup.yaml")
    assert (system.first_stage.backend, system.first_stage.search) == ("impact-csc", {"query_side": "lookup"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: X\nfirst_stage: {run: a.trec, search: {query_top_n: 2}}\n")
    with pytest.raises(InputError, match="read from a run takes no search"):
        load_system(bad)


def test_cluster_doc_freqs_are_kept_per_physical_index(tmp_path, caplog):
    pytest.importorskip("opensearchpy")
    from twostage_search.indexes.opensearch.doc_freqs import cached_doc_freqs

    calls = []

    def count(terms):
        calls.append(terms)
        return {t: len(t) for t in terms if t != "zz"}

    assert cached_doc_freqs(tmp_path, "idx--1", count, lambda: ["b", "aaa", "zz", "b"]) == {"aaa": 3, "b": 1}
    assert calls == [["aaa", "b", "zz"]]  # each term once, sorted
    assert (
        cached_doc_freqs(tmp_path, "idx--1", count, lambda: pytest.fail("read")) == {"aaa": 3, "b": 1}
        and len(calls) == 1
    )
    assert cached_doc_freqs(tmp_path, "idx--2", count, lambda: ["cc"]) == {"cc": 2} and len(calls) == 2  # rebuilt
    (tmp_path / "doc_freqs.json").write_text("{not json")
    assert cached_doc_freqs(tmp_path, "idx--2", count, lambda: ["cc"]) == {"cc": 2} and len(calls) == 3
    assert "counting again" in caplog.text
    target = tmp_path / "missing" / "file"
    target.parent.write_text("a file where the index directory should be")
    assert cached_doc_freqs(target, "idx--2", count, lambda: ["cc"]) == {"cc": 2}  # kept nowhere, still answered


def test_hybrid_components_take_their_own_options(built_indexes, tiny_queries, tmp_path):
    """``COMPONENT.OPTION`` reaches one component of a hybrid: its ranking is that backend's with the option."""
    pytest.importorskip("onnxruntime")
    from twostage_search import indexes
    from twostage_search.indexes.hybrid import Component, HybridIndex

    dense, csc = built_indexes["dense-flat"], built_indexes["impact-csc"]
    parts = [Component("splade", str(csc.path), 1.0), Component("dense", str(dense.path), 2.0)]
    hybrid = HybridIndex.compose(tmp_path / "hybrid", parts)
    static = "bundled:bge-small-query-static"
    options = {"dense.query_encoder": static, "splade.query_side": "lookup", "weights": {"splade": 1.0}}
    retriever = indexes.open_retriever(hybrid, options)
    lookup, student = csc.retriever(query_side="lookup"), dense.retriever(query_encoder=static)
    for q in tiny_queries[:3]:
        assert retriever.components["splade"].retrieve(q, 5) == lookup.retrieve(q, 5), q.text
        assert retriever.components["dense"].retrieve(q, 5) == student.retrieve(q, 5), q.text
    for bad, message in [
        ({"sparse.query_side": "lookup"}, "no component named sparse"),
        ({"dense.query_side": "lookup"}, r"dense-flat retrievers take no option query_side"),
        ({"splade.query_side": "Lookup"}, "query_side must be"),
    ]:
        with pytest.raises(InputError, match=message):
            indexes.open_retriever(hybrid, bad)

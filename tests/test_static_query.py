"""The static query encoder (token table + mean, optional residual MLP): hand-computed vectors from tiny tables,
atomic saving, and a dense-flat index searched with it as its recorded query side."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import need

need("onnxruntime", "dense")
need("tokenizers", "dense")

import tokenizers

from twostage_search.engine.dense import BGE_QUERY_PREFIX, DEFAULT_DENSE, DenseEncoder, dense_model_files
from twostage_search.engine.errors import InputError
from twostage_search.engine.static_query import (
    STUDENT_FILE,
    TABLE_FILE,
    StaticQueryEncoder,
    save_static,
)
from twostage_search.engine.types import Query
from twostage_search.indexes.dense import DenseFlatIndex

TEACHER = {"model": DEFAULT_DENSE, "pooling": "cls", "query_prefix": BGE_QUERY_PREFIX, "max_length": 256}


@pytest.fixture(scope="module")
def vocab() -> dict[str, int]:
    """bge-small's word-piece vocabulary, read with the tokenizers library (not the code under test)."""
    tokenizer = tokenizers.Tokenizer.from_file(str(dense_model_files(DEFAULT_DENSE)[1]))
    return dict(tokenizer.get_vocab())


def tiny_table(vocab: dict[str, int], rows: dict[str, list[float]], dim: int = 2) -> np.ndarray:
    table = np.zeros((len(vocab), dim), dtype=np.float32)
    for token, row in rows.items():
        table[vocab[token]] = row
    return table


def write(path: Path, weights: dict[str, np.ndarray], dtype: str = "float16") -> Path:
    save_static(path, {"teacher": TEACHER, "max_length": 256}, weights, dtype=dtype)
    return path


def test_mean_of_token_rows_plus_bias_normalised(tmp_path, vocab):
    table = tiny_table(vocab, {"young": [1.0, 0.0], "kitten": [0.0, 2.0], "pet": [4.0, 0.0]})
    encoder = StaticQueryEncoder(str(write(tmp_path / "s", {"table": table, "bias": np.array([0.0, 0.0])})))
    got = encoder.encode_queries(["young kitten", "Young KITTEN pet", "pet"])
    # "young kitten": mean (0.5, 1) → (1, 2)/√5; the tokenizer lowercases; + "pet": mean (5/3, 2/3) → (5, 2)/√29
    assert np.allclose(got[0], [1 / math.sqrt(5), 2 / math.sqrt(5)], atol=1e-6)
    assert np.allclose(got[1], [5 / math.sqrt(29), 2 / math.sqrt(29)], atol=1e-6)
    assert np.allclose(got[2], [1.0, 0.0], atol=1e-6)
    assert encoder.dim == 2 and encoder.query_prefix == BGE_QUERY_PREFIX
    assert encoder.count_tokens(["young kitten pet"]) == 3  # no [CLS]/[SEP]
    assert encoder.encode_queries([]).shape == (0, 2)


def test_bias_counts_once_and_an_empty_query_is_the_bias(tmp_path, vocab):
    table = tiny_table(vocab, {"young": [1.0, 0.0], "kitten": [3.0, 0.0]})
    encoder = StaticQueryEncoder(str(write(tmp_path / "s", {"table": table, "bias": np.array([0.0, 2.0])})))
    got = encoder.encode_queries(["young kitten", ""])
    # mean (2, 0) + bias (0, 2) = (2, 2) → (1, 1)/√2; no tokens → the bias (0, 2) → (0, 1)
    assert np.allclose(got, [[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, 1.0]], atol=1e-6)


def test_residual_mlp_refines_the_static_vector(tmp_path, vocab):
    table = tiny_table(vocab, {"young": [3.0, 4.0]})
    weights = {
        "table": table,
        "bias": np.zeros(2),
        "w1": np.array([[1.0], [0.0]]),  # hidden = relu(x - 1)
        "b1": np.array([-1.0]),
        "w2": np.array([[0.0, 1.0]]),  # adds the hidden unit to the second coordinate
        "b2": np.array([1.0, 0.0]),
    }
    encoder = StaticQueryEncoder(str(write(tmp_path / "s", weights)))
    # v = (3, 4); hidden = relu(3 - 1) = 2; u = (3, 4) + (0, 2) + (1, 0) = (4, 6) → (2, 3)/√13
    assert np.allclose(encoder.encode_queries(["young"])[0], [2 / math.sqrt(13), 3 / math.sqrt(13)], atol=1e-6)
    assert encoder.config()["residual"] is True


def test_token_weights_make_a_weighted_mean(tmp_path, vocab):
    table = tiny_table(vocab, {"young": [1.0, 0.0], "kitten": [0.0, 1.0], "pet": [3.0, 3.0]})
    weights = np.ones(len(vocab), dtype=np.float32)
    weights[vocab["young"]], weights[vocab["kitten"]], weights[vocab["pet"]] = 3.0, 1.0, 0.5
    bias = np.array([0.0, 0.25])
    encoder = StaticQueryEncoder(str(write(tmp_path / "s", {"table": table, "bias": bias, "weights": weights})))
    got = encoder.encode_queries(["young kitten", "kitten pet", "pet", ""])
    # (3·(1, 0) + 1·(0, 1)) / 4 = (0.75, 0.25), + bias → (0.75, 0.5) → (3, 2)/√13
    assert np.allclose(got[0], [3 / math.sqrt(13), 2 / math.sqrt(13)], atol=1e-6)
    # (1·(0, 1) + 0.5·(3, 3)) / 1.5 = (1, 5/3), + bias → (1, 23/12) → (12, 23)/√673
    assert np.allclose(got[1], [12 / math.sqrt(673), 23 / math.sqrt(673)], atol=1e-6)
    # one token: its weight cancels, (3, 3) + bias = (3, 3.25) → (12, 13)/√313; no token → the bias
    assert np.allclose(got[2], [12 / math.sqrt(313), 13 / math.sqrt(313)], atol=1e-6)
    assert np.allclose(got[3], [0.0, 1.0], atol=1e-6)
    assert encoder.config()["token_weights"] is True
    for bad in (np.zeros(len(vocab)), np.ones(3), np.full(len(vocab), np.nan)):
        with pytest.raises(InputError, match="weights"):
            write(tmp_path / "bad", {"table": table, "bias": bias, "weights": bad})


def test_save_reloads_the_same_vectors_and_replaces_atomically(tmp_path, vocab):
    path = tmp_path / "s"
    first = tiny_table(vocab, {"young": [0.25, 1.5]})
    write(path, {"table": first, "bias": np.array([0.5, 0.0])})
    before = StaticQueryEncoder(str(path)).encode_queries(["young", "pet"])
    assert np.array_equal(StaticQueryEncoder(str(path)).encode_queries(["young", "pet"]), before)
    stored = np.load(path / TABLE_FILE)
    assert stored["table"].dtype == np.float16 and np.array_equal(stored["table"], first)  # exact in float16
    assert json.loads((path / STUDENT_FILE).read_text())["kind"] == "static"
    files = sorted(p.name for p in path.iterdir())
    with pytest.raises(InputError):  # a bad table: nothing written, the old student is untouched
        write(path, {"table": first, "bias": np.zeros(3)})
    with pytest.raises(InputError):  # half an MLP
        write(path, {"table": first, "bias": np.zeros(2), "w1": np.zeros((2, 1))})
    assert sorted(p.name for p in path.iterdir()) == files
    assert np.array_equal(StaticQueryEncoder(str(path)).encode_queries(["young", "pet"]), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp directory left behind
    write(path, {"table": tiny_table(vocab, {"young": [0.0, 1.0]}), "bias": np.zeros(2)}, dtype="float32")
    assert np.allclose(StaticQueryEncoder(str(path)).encode_queries(["young"])[0], [0.0, 1.0])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="refusing"):
        write(tmp_path / "other", {"table": first, "bias": np.zeros(2)})


def test_a_table_of_the_wrong_vocabulary_is_refused(tmp_path):
    path = write(tmp_path / "s", {"table": np.zeros((10, 2)), "bias": np.zeros(2)})
    with pytest.raises(InputError, match="rows"):
        StaticQueryEncoder(str(path))


def test_dense_flat_searches_with_the_recorded_static_query_side(tmp_path, vocab, tiny_docs):
    """A table whose "kitten" row is the cats document's own vector: the query "kitten" lands on that document
    (cosine 1), "tides moon" on the mean of the Moon and Berlin rows, i.e. ranks those two first."""
    path = tmp_path / "idx"
    built = DenseFlatIndex.build(tiny_docs, path, encoder=DenseEncoder(threads=1), progress=False)
    vectors = {doc_id: np.asarray(built.vectors[i], dtype=np.float32) for i, doc_id in enumerate(built.doc_ids)}
    rows = {"kitten": vectors["d07"].tolist(), "tides": vectors["d10"].tolist(), "moon": vectors["d02"].tolist()}
    table = tiny_table(vocab, rows, dim=384)
    student = write(tmp_path / "static", {"table": table, "bias": np.zeros(384)}, dtype="float32")
    index = DenseFlatIndex.set_query_encoder(path, str(student))
    assert json.loads((path / "meta.json").read_text())["query_encoder"] == str(student)
    retriever = index.retriever()
    assert isinstance(retriever.encoder, StaticQueryEncoder)
    top = retriever.retrieve(Query("q1", "kitten"), 3)
    assert top[0].doc_id == "d07" and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert {h.doc_id for h in retriever.retrieve(Query("q2", "tides moon"), 2)} == {"d10", "d02"}
    assert isinstance(index.retriever(query_encoder="full").encoder, DenseEncoder)
    with pytest.raises(InputError, match="model"):
        other = dict(TEACHER, model="some/other-model")
        save_static(tmp_path / "other", {"teacher": other}, {"table": table, "bias": np.zeros(384)})
        DenseFlatIndex.set_query_encoder(path, str(tmp_path / "other"))


def test_cli_records_the_query_side_of_a_flat_index_and_of_a_hybrids_dense_part(tmp_path, vocab, tiny_docs, capsys):
    from twostage_search.cli import main
    from twostage_search.indexes.hybrid import Component, HybridIndex

    encoder = DenseEncoder(threads=1)
    flat = DenseFlatIndex.build(tiny_docs, tmp_path / "flat", encoder=encoder, progress=False)
    kitten = np.asarray(flat.vectors[flat.doc_ids.index("d07")], dtype=np.float32)
    table = tiny_table(vocab, {"kitten": kitten.tolist()}, dim=384)
    student = write(tmp_path / "static", {"table": table, "bias": np.zeros(384)}, dtype="float32")
    hybrid = tmp_path / "hybrid"
    other = DenseFlatIndex.build(tiny_docs, tmp_path / "other", encoder=encoder, progress=False)
    HybridIndex.compose(hybrid, [Component("a", str(other.path), 1.0), Component("dense", str(flat.path), 2.0)])

    assert main(["query-side", "--index", str(hybrid), str(student)]) == 0  # the hybrid's dense part
    assert f"with {student} (was full)" in capsys.readouterr().out
    assert DenseFlatIndex.open(flat.path).meta["query_encoder"] == str(student)
    assert "query_encoder" not in DenseFlatIndex.open(other.path).meta
    searched = HybridIndex.open(hybrid).retriever(weights={"a": 0}).retrieve(Query("q", "kitten"), 1)
    assert searched.doc_ids == ["d07"]  # the static side: the "kitten" row is d07's own vector
    assert main(["query-side", "--index", str(flat.path), "full"]) == 0
    assert "query_encoder" not in DenseFlatIndex.open(flat.path).meta
    capsys.readouterr()
    foreign = tmp_path / "foreign"  # a student fitted onto another encoder
    save_static(foreign, {"teacher": dict(TEACHER, model="some/other-model")}, {"table": table, "bias": np.zeros(384)})
    for argv in (
        ["query-side", "--index", str(hybrid), str(foreign)],
        ["query-side", "--index", str(hybrid), "--component", "b", "full"],  # no such component
        ["query-side", "--index", str(flat.path), str(tmp_path / "missing")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("twostage: error:") and "\n" not in err
    assert "query_encoder" not in DenseFlatIndex.open(flat.path).meta  # nothing written by a refused command


BUNDLED = "bundled:bge-small-query-static"


def test_bundled_static_student_loads_offline_and_names_its_teacher():
    from twostage_search.engine.dense_query import check_teacher, student_config
    from twostage_search.engine.models import resolve_model

    path = Path(resolve_model(BUNDLED))
    config = student_config(path)
    assert config["kind"] == "static"
    check_teacher(config, DenseEncoder(threads=1).config())  # fitted onto the default index's encoder
    encoder = StaticQueryEncoder(BUNDLED)
    vectors = encoder.encode_queries(["what causes ocean tides", "young kitten pet"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(encoder.encode_queries(["young kitten pet"])[0], vectors[1])  # independent of batch-mates

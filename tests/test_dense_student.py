"""The bi-encoder student: MarginMSE training on a tiny slice (the real all-MiniLM-L6-v2), its reload, and the
``sentence-transformers`` dense encoder kind with ``twostage index --backend dense-flat``."""

import json
import random
import shutil

import numpy as np
import pytest

from tests.helpers import TINY, need

need("sentence_transformers", "rerank")
need("datasets", "train")
need("onnxruntime", "dense")

from sentence_transformers import SentenceTransformer

from twostage_search.cli import main
from twostage_search.engine.dense import create_dense_encoder, dense_encoder_from_config
from twostage_search.engine.dense_st import SentenceTransformerEncoder
from twostage_search.engine.dense_train import MarginTriple, StudentConfig, margin_mse, margin_triples, train_student
from twostage_search.engine.errors import InputError, UnknownBackendError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.types import Query
from twostage_search.indexes import load

MARGIN = 0.9  # teacher margin of each (relevant, other) pair: far above what the base model's cosines give


@pytest.fixture(scope="module")
def slice_triples(tiny_docs, tiny_queries, tiny_qrels):
    """Each tiny query with its relevant document against the two next documents of the corpus."""
    docs = {d.doc_id: d.full_text for d in tiny_docs}
    ids = sorted(docs)
    triples = []
    for q in tiny_queries:
        (relevant,) = tiny_qrels[q.query_id]
        at = ids.index(relevant)
        for other in (ids[(at + 1) % len(ids)], ids[(at + 2) % len(ids)]):
            triples.append(MarginTriple(q.text, docs[relevant], docs[other], MARGIN))
    return triples


@pytest.fixture(scope="module")
def trained(tmp_path_factory, slice_triples):
    config = StudentConfig(epochs=4, batch_size=6, learning_rate=1e-4, warmup_ratio=0.0, logging_steps=1)
    return train_student(slice_triples, tmp_path_factory.mktemp("student") / "model", config)


def test_margin_triples_orders_each_pair_and_never_repeats_one():
    scored = [("a", 3.0), ("b", 1.0), ("c", 2.5), ("a", 0.0)]  # a text listed twice is never paired with itself
    triples = margin_triples("q", scored, pairs=10, scale=0.5, rng=random.Random(1))
    assert len(triples) == 5  # 6 index pairs minus (a, a)
    assert {(t.a, t.b, t.margin) for t in triples} == {
        ("a", "b", 1.0), ("a", "c", 0.25), ("c", "a", 1.25), ("b", "a", 0.5), ("c", "b", 0.75),
    }  # fmt: skip
    assert len(margin_triples("q", scored, pairs=2, rng=random.Random(1))) == 2
    with pytest.raises(InputError):
        margin_triples("q", scored, pairs=1, scale=0.0, rng=random.Random(1))


def test_training_lowers_the_margin_error_and_records_the_run(trained, slice_triples):
    base = SentenceTransformer(resolve_model("bundled:minilm-l6"), device="cpu")
    before, after = margin_mse(base, slice_triples), margin_mse(trained.model, slice_triples)
    assert after < before
    record = json.loads((trained.path / "training.json").read_text())
    assert record["triples"] == len(slice_triples) == 12
    assert len(record["logged_losses"]) == 4 * 2  # 12 triples in batches of 6, 4 epochs, a loss per step


def test_saved_student_reloads_with_the_same_embeddings(trained, tiny_docs):
    texts = [d.full_text for d in tiny_docs]
    in_memory = trained.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    reloaded = SentenceTransformerEncoder(str(trained.path))
    np.testing.assert_array_equal(reloaded.encode_docs(texts), in_memory)
    config = reloaded.config()
    assert config["kind"] == "sentence-transformers" and config["model"] == str(trained.path.resolve())
    again = dense_encoder_from_config(config)
    query = ["young kitten pet"]
    np.testing.assert_array_equal(again.encode_queries(query), reloaded.encode_queries(query))


def test_cli_dense_flat_builds_and_searches_with_the_student(trained, tiny_docs, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    argv = ["index", str(TINY / "corpus.jsonl"), "--index", str(index_dir), "--backend", "dense-flat", "--no-progress"]
    assert main([*argv, "--encoder", "sentence-transformers", "--model", str(trained.path)]) == 0
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["encoder"]["kind"] == "sentence-transformers" and meta["dim"] == 384
    assert meta["encoder"]["model"] == str(trained.path.resolve())

    # the expected ranking straight from the trained model: cosine of the query with every document
    docs = [d.doc_id for d in tiny_docs]
    doc_vectors = trained.model.encode([d.full_text for d in tiny_docs], normalize_embeddings=True)
    query_vector = trained.model.encode(["how do plants make oxygen from sunlight"], normalize_embeddings=True)[0]
    expected = [docs[i] for i in np.argsort(-(doc_vectors @ query_vector), kind="stable")[:3]]
    capsys.readouterr()
    query = "how do plants make oxygen from sunlight"
    assert main(["search", "--index", str(index_dir), query, "--k", "3", "--json"]) == 0
    assert [h["doc_id"] for h in json.loads(capsys.readouterr().out)["hits"]] == expected

    retriever = load(index_dir).retriever()
    assert isinstance(retriever.encoder, SentenceTransformerEncoder)  # the recorded encoder, not the default
    assert [c.doc_id for c in retriever.retrieve(Query("q", "how do plants make oxygen from sunlight"), 3)] == expected


def test_an_index_refuses_a_student_whose_weights_changed(trained, tiny_docs, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained.path, model_dir)
    from twostage_search.indexes.dense import DenseFlatIndex

    encoder = DenseFlatIndex.create_encoder(kind="sentence-transformers", model=str(model_dir))
    index = DenseFlatIndex.build(tiny_docs, tmp_path / "idx", encoder=encoder, progress=False)
    weights = next(model_dir.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(InputError, match="changed since the index was built"):
        index.retriever()


def test_bad_student_specs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(InputError, match="not a local sentence-transformers model directory"):
        create_dense_encoder("sentence-transformers", model=str(tmp_path))
    with pytest.raises(UnknownBackendError, match="unknown dense encoder"):
        create_dense_encoder("no-such-kind")
    argv = ["index", str(TINY / "corpus.jsonl"), "--index", str(tmp_path / "idx"), "--backend", "dense-flat"]
    assert main([*argv, "--encoder", "sentence-transformers"]) != 0
    assert "needs --model" in capsys.readouterr().err
    assert main([*argv, "--encoder", "splade"]) != 0  # a sparse encoder is not a dense kind
    assert "unknown dense encoder 'splade'" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()


def test_cli_hybrid_takes_the_student_as_its_dense_component(trained, tmp_path, capsys):
    index_dir = tmp_path / "hybrid"
    argv = ["index", str(TINY / "corpus.jsonl"), "--index", str(index_dir), "--no-progress"]
    assert main([*argv, "--dense-encoder", "sentence-transformers", "--dense-model", str(trained.path)]) == 0
    dense_meta = json.loads((index_dir / "dense" / "meta.json").read_text())
    assert dense_meta["encoder"]["kind"] == "sentence-transformers"
    capsys.readouterr()
    assert main(["search", "--index", str(index_dir), "what is the capital of france", "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["doc_id"] == "d01"


def test_student_study_names_its_base(tmp_path):
    from twostage_search.benchmarks.studies.student import student_base

    assert student_base("bundled:minilm-l6", tmp_path) == ("bundled:minilm-l6", "minilm-l6")
    assert student_base("var/models/my-encoder", tmp_path) == ("var/models/my-encoder", "my-encoder")
    assert not any(tmp_path.iterdir())  # nothing converted for a sentence-transformers base


def test_student_assistant_kinds(tmp_path):
    from twostage_search.benchmarks.studies.student_data import ASSISTANTS, Assistant, _FineTunedLogits
    from twostage_search.engine.errors import InputError

    assert ASSISTANTS == ("graded", "graded-ce")
    with pytest.raises(InputError, match="unknown assistant 'lore'"):
        Assistant(tmp_path, "lore")

    class Scored:  # graded-ce's shape: one list of logits and a cost
        def logits(self, query, candidates):
            return [float(len(c)) for c in candidates], "cost"

    # a LogitCache asks for its logit by name; the fine-tuned model has one, under whatever name is asked
    assert _FineTunedLogits(Scored()).logits("q", ["ab", "c"], ["ce"]) == ({"ce": [2.0, 1.0]}, "cost")

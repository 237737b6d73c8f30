"""``twostage export-onnx --bi-encoder``: a sentence-transformers bi-encoder (the real all-MiniLM-L6-v2, mean
pooling) to an ONNX graph the ``onnx`` dense encoder reads with the model's own pooling and query prefix."""

import json

import numpy as np
import pytest

from tests.helpers import TINY, need
from twostage_search.cli import main
from twostage_search.engine.dense import DenseEncoder, model_settings
from twostage_search.engine.errors import InputError

need("sentence_transformers", "rerank")
need("onnx", "export")

TEXTS = ["how do plants make oxygen from sunlight", "red running shoes", "a blender with a 500 W motor"]


@pytest.fixture(scope="module")
def minilm():
    from sentence_transformers import SentenceTransformer

    from twostage_search.engine.models import resolve_model

    return SentenceTransformer(resolve_model("bundled:minilm-l6"), device="cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "minilm-fp32"
    assert main(["export-onnx", "bundled:minilm-l6", str(out), "--bi-encoder"]) == 0  # fp32 by default
    return out


def test_fp32_export_gives_the_torch_vectors_with_the_models_pooling(minilm, exported):
    assert json.loads((exported / "dense.json").read_text()) == {"pooling": "mean", "query_prefix": ""}
    info = json.loads((exported / "export.json").read_text())
    assert (info["kind"], info["precision"], info["pooling"]) == ("bi-encoder", "fp32", "mean")
    encoder = DenseEncoder(str(exported), max_length=128)
    assert (encoder.pooling, encoder.query_prefix) == ("mean", "")  # from dense.json, not bge's defaults
    expected = minilm.encode(TEXTS, normalize_embeddings=True)
    for got in (encoder.encode_queries(TEXTS), encoder.encode_docs(TEXTS)):
        assert np.allclose(got, expected, atol=1e-4)


def test_int8_export_stays_close(minilm, tmp_path, capsys):
    out = tmp_path / "minilm-int8"
    assert main(["export-onnx", "bundled:minilm-l6", str(out), "--bi-encoder", "--precision", "int8"]) == 0
    assert "int8 ONNX bi-encoder (mean pooling" in capsys.readouterr().out
    got = DenseEncoder(str(out)).encode_queries(TEXTS)
    cosines = (got * minilm.encode(TEXTS, normalize_embeddings=True)).sum(axis=1)
    assert cosines.min() > 0.95  # activations are quantised per run: close, not equal


def test_an_index_built_from_the_export_records_its_settings(exported, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    argv = ["index", str(TINY / "corpus.jsonl"), "--index", str(index_dir), "--backend", "dense-flat"]
    assert main([*argv, "--model", str(exported), "--no-progress"]) == 0
    encoder = json.loads((index_dir / "meta.json").read_text())["encoder"]
    assert (encoder["pooling"], encoder["query_prefix"]) == ("mean", "")
    capsys.readouterr()
    assert main(["search", "--index", str(index_dir), TEXTS[0], "--k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 2


def test_explicit_settings_win_and_bad_settings_are_clear(exported, tmp_path):
    assert DenseEncoder(str(exported), pooling="cls", query_prefix="q: ").pooling == "cls"
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (bad / name).symlink_to(exported / name)
    for text, message in [("[1]", "JSON object"), ('{"pooling": 3}', "must be strings"), ("{", "not a readable")]:
        (bad / "dense.json").write_text(text)
        with pytest.raises(InputError, match=message):
            model_settings(bad / "model.onnx")
    (bad / "dense.json").write_text('{"pooling": "max"}')
    with pytest.raises(InputError, match="pooling must be one of"):
        DenseEncoder(str(bad))


def test_a_cross_encoder_is_not_a_bi_encoder(tmp_path, capsys):
    # the MS MARCO cross-encoder has no pooling: one line, exit 2, nothing written
    assert main(["export-onnx", "bundled:minilm-l6-ce", str(tmp_path / "x"), "--bi-encoder"]) == 2
    assert not (tmp_path / "x").exists()

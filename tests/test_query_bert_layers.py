"""A contextual query student built from chosen layers of its teacher (DistilBERT's initialisation): a tiny
4-layer BERT encoder over the teacher's vocabulary (seeded random weights, not a real model) exported bare to
ONNX stands in for the teacher; the student keeps its layers 1 and 3 with CLS pooling and an identity or no
head, and is exported and loaded as a query side."""

import json

import numpy as np
import pytest

from tests.helpers import (
    STUDENT_QUERIES,
    export_bare_encoder,
    need,
    student_teacher,
    teacher_token_ids,
    tiny_teacher_vocab_bert,
)

need("torch", "export")
need("transformers", "export")
need("onnx", "export")
need("onnxruntime", "dense")
need("tokenizers", "dense")

from twostage_search.benchmarks.studies.query_bert import checkpoint_name
from twostage_search.benchmarks.studies.query_bert_train import encode, export_onnx, student_module
from twostage_search.engine.bert_query import MODEL_FILE, OnnxQueryEncoder, student_document
from twostage_search.engine.errors import InputError
from twostage_search.rerankers.onnx_to_torch import encoder_from_onnx

TEACHER = student_teacher()
QUERIES = STUDENT_QUERIES


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-layer BERT encoder (hidden 16, 2 heads) over the teacher's vocabulary, seeded, and its bare ONNX export
    (inputs → last hidden state)."""
    import torch

    model = tiny_teacher_vocab_bert(4).eval()
    with torch.no_grad():  # every tensor distinct (the exporter merges equal initializers, e.g. all-zero biases)
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp("tiny-teacher") / "encoder.onnx"
    export_bare_encoder(model, path, torch.tensor([[101, 2000, 2001, 102]]))
    return model, path


def through_layers(model, ids, layer_ids):
    """The teacher's embeddings, then its layers ``layer_ids`` one after another, called here module by
    module: the unit CLS vector of one unpadded row."""
    import torch

    with torch.no_grad():
        hidden = model.embeddings(
            input_ids=torch.tensor([ids]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long)
        )
        for i in layer_ids:
            out = model.encoder.layer[i](hidden)
            hidden = out[0] if isinstance(out, tuple) else out
    cls = hidden[0, 0].numpy()
    return cls / np.linalg.norm(cls)


def test_the_chosen_layers_are_the_ones_copied(teacher):
    import torch

    model, path = teacher
    original = model.state_dict()
    student = encoder_from_onnx(path, layer_ids=[1, 3])
    assert student.config.num_hidden_layers == 2 and not student.training
    compared = 0
    for key, value in student.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("encoder.layer."):
            _, _, new, rest = key.split(".", 3)
            want = original[f"encoder.layer.{[1, 3][int(new)]}.{rest}"]
        else:
            want = original[key]
        assert torch.equal(value, want), key
        compared += 1
    assert compared == 5 + 2 * 16  # embeddings (3 tables, LayerNorm) and 16 tensors per layer
    assert not torch.equal(
        original["encoder.layer.1.output.dense.weight"], original["encoder.layer.0.output.dense.weight"]
    )
    first = encoder_from_onnx(path, 2).state_dict()
    assert torch.equal(first["encoder.layer.1.output.dense.weight"], original["encoder.layer.1.output.dense.weight"])
    for bad in ([4], [1, 1], []):
        with pytest.raises(InputError, match="cannot keep"):
            encoder_from_onnx(path, layer_ids=bad)
    with pytest.raises(InputError, match="not both"):
        encoder_from_onnx(path, 2, layer_ids=[1, 3])


@pytest.mark.parametrize("head", ["identity", "none"])
def test_an_untrained_student_of_chosen_layers_is_their_own_cls_vector(teacher, head):
    """With an identity (or no) head the untrained student's vector is the chosen layers' CLS state, normalised;
    with every layer it is the teacher's own CLS vector."""
    model, path = teacher
    rows = teacher_token_ids(QUERIES)
    vectors = {}
    for layer_ids in ([1, 3], [0, 1, 2, 3]):
        student = student_module(encoder_from_onnx(path, layer_ids=layer_ids), 16, "cls", head=head)
        got = encode(student, rows)
        want = np.stack([through_layers(model, r, layer_ids) for r in rows])
        assert np.abs(got - want).max() < 1e-5
        vectors[len(layer_ids)] = got
    assert np.abs(vectors[2] - vectors[4]).max() > 0.05  # which layers are kept matters


def test_heads_other_than_fit_need_the_hidden_size_and_no_residual(teacher):
    _, path = teacher
    trunk = encoder_from_onnx(path, layer_ids=[3])
    with pytest.raises(ValueError, match="hidden size"):
        student_module(trunk, 8, "cls", head="identity")
    with pytest.raises(ValueError, match="no residual"):
        student_module(trunk, 16, "cls", head="none", residual=True)
    assert len(list(student_module(trunk, 16, "cls", head="none").head.parameters())) == 0


@pytest.mark.parametrize("head", ["identity", "none"])
def test_export_then_load_gives_the_torch_students_vectors(teacher, tmp_path, head):
    import torch

    _, path = teacher
    student = student_module(encoder_from_onnx(path, layer_ids=[1, 3]), 16, "cls", head=head).eval()
    with torch.no_grad():  # move the trunk (and head) off their initial weights, as training would
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path / "student"
    out.mkdir()
    export_onnx(student, out / MODEL_FILE)
    document = student_document(
        TEACHER,
        layers=2,
        layer_ids=[1, 3],
        head=head,
        pooling="cls",
        dim=16,
        max_length=64,
        parameters=sum(p.numel() for p in student.parameters()),
        int8=False,
        training={"test": True},
    )
    (out / "student.json").write_text(json.dumps(document))
    encoder = OnnxQueryEncoder(str(out), threads=1)
    got = encoder.encode_queries(QUERIES)
    want = np.concatenate([encode(student, [r]) for r in teacher_token_ids(QUERIES)])
    assert got.shape == (3, 16)
    assert np.abs(got - want).max() < 1e-3  # both fp32; far looser than any CPU's rounding differences
    assert encoder.student["layer_ids"] == [1, 3] and encoder.student["head"] == head


def test_checkpoint_names_keep_the_first_layers_names():
    assert checkpoint_name([0, 1, 2], "mean", None) == "L3-mean"
    assert checkpoint_name([0, 1, 2], "mean", "bundled:x") == "L3-mean-residual"
    assert checkpoint_name([1, 3, 5, 7, 9, 11], "cls", None, "identity") == "L6-ids1-3-5-7-9-11-cls-head-identity"

"""The contextual query student: a tiny BERT student (random weights over the teacher's vocabulary, not a real
model) trained-model stand-in, its ONNX export against the torch model, and loading it as an index's query side."""

import json

import numpy as np
import pytest

from tests.helpers import STUDENT_QUERIES, need, student_teacher, teacher_token_ids, tiny_teacher_vocab_bert

need("torch", "export")
need("transformers", "export")
need("onnx", "export")
need("onnxruntime", "dense")
need("tokenizers", "dense")

from twostage_search.benchmarks.studies.query_bert_train import encode, export_onnx, padded, student_module
from twostage_search.engine.bert_query import MODEL_FILE, OnnxQueryEncoder, read_config, student_document
from twostage_search.engine.dense import DenseEncoder
from twostage_search.engine.dense_query import open_student, student_config
from twostage_search.engine.errors import InputError
from twostage_search.engine.static_query import StaticQueryEncoder, save_static
from twostage_search.engine.types import Query
from twostage_search.indexes.dense import DenseFlatIndex

TEACHER = student_teacher()
QUERIES = STUDENT_QUERIES


def tiny_student(pooling: str, dim: int = 8):
    """A 1-layer BERT (hidden 16, 2 heads) over the teacher's vocabulary with a head onto ``dim``, seeded."""
    import torch

    model = student_module(tiny_teacher_vocab_bert(1), dim, pooling)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def write_student(model, path, *, int8: bool = False, teacher=TEACHER, static=None):
    path.mkdir(parents=True)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        export_onnx(model, path / "fp32.onnx")
        quantize_dynamic(str(path / "fp32.onnx"), str(path / MODEL_FILE), weight_type=QuantType.QInt8)
    else:
        export_onnx(model, path / MODEL_FILE)
    document = student_document(
        teacher,
        layers=1,
        pooling="mean",
        dim=model.head.out_features,
        max_length=64,
        parameters=sum(p.numel() for p in model.parameters()),
        int8=int8,
        training={"test": True},
        static=static,
    )
    (path / "student.json").write_text(json.dumps(document))
    return path


def torch_vectors(model, texts, static=None):
    import torch

    with torch.no_grad():
        if static is None:
            return np.concatenate([model(*padded([ids])).numpy() for ids in teacher_token_ids(texts)])
        return np.concatenate(
            [
                model(*padded([ids]), torch.from_numpy(v[None])).numpy()
                for ids, v in zip(teacher_token_ids(texts), static, strict=True)
            ]
        )


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_onnx_export_equals_the_torch_model(tmp_path, pooling):
    model = tiny_student(pooling)
    encoder = OnnxQueryEncoder(str(write_student(model, tmp_path / "s")), threads=1)
    got = encoder.encode_queries(QUERIES)
    want = torch_vectors(model, QUERIES)
    assert got.shape == (3, 8)
    assert np.allclose(np.linalg.norm(want, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - want).max() < 1e-3  # both fp32; far looser than any CPU's rounding differences
    assert np.array_equal(encoder.encode_queries(QUERIES[1:2])[0], got[1])  # independent of batch-mates
    assert encoder.count_tokens(QUERIES[:1]) == 6  # [CLS] what causes ocean tides [SEP]


def test_int8_export_stays_close_to_the_torch_model(tmp_path):
    model = tiny_student("mean")
    got = OnnxQueryEncoder(str(write_student(model, tmp_path / "s", int8=True)), threads=1).encode_queries(QUERIES)
    cosines = (got * torch_vectors(model, QUERIES)).sum(axis=1)
    assert cosines.min() > 0.9 and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_padded_batches_give_each_text_its_own_vector():
    """Mean pooling over real tokens only: a short text padded beside a long one keeps its vector."""
    model = tiny_student("mean")
    rows = teacher_token_ids(QUERIES)
    batched = encode(model, rows)
    alone = np.concatenate([encode(model, [r]) for r in rows])
    assert np.abs(batched - alone).max() < 1e-5


def test_student_directory_is_checked(tmp_path):
    with pytest.raises(InputError, match="needs"):
        read_config(tmp_path)
    path = write_student(tiny_student("mean"), tmp_path / "s")
    (path / "student.json").write_text(json.dumps({"kind": "onnx-encoder", "teacher": TEACHER}))
    with pytest.raises(InputError, match="lacks dim, max_length"):
        OnnxQueryEncoder(str(path))


def test_dense_flat_index_searches_with_a_recorded_contextual_student(tmp_path, tiny_docs):
    """The student (head onto 384 dims) as the index's recorded query side: the retriever ranks documents by the
    dot product of the student's query vector with the stored document vectors."""
    path = tmp_path / "idx"
    built = DenseFlatIndex.build(tiny_docs, path, encoder=DenseEncoder(threads=1), progress=False)
    model = tiny_student("mean", dim=384)
    student = write_student(model, tmp_path / "student")
    assert student_config(student)["kind"] == "onnx-encoder"
    index = DenseFlatIndex.set_query_encoder(path, str(student))
    retriever = index.retriever()
    assert isinstance(retriever.encoder, OnnxQueryEncoder)
    vector = torch_vectors(model, ["tides of the moon"])[0]
    scores = np.asarray(built.vectors, dtype=np.float32) @ vector
    want = [built.doc_ids[i] for i in np.argsort(-scores, kind="stable")[:3]]
    assert [h.doc_id for h in retriever.retrieve(Query("q", "tides of the moon"), 3)] == want
    assert isinstance(open_student(str(student)), OnnxQueryEncoder)
    other = write_student(model, tmp_path / "other", teacher=dict(TEACHER, model="some/other-model"))
    with pytest.raises(InputError, match="model"):
        DenseFlatIndex.set_query_encoder(path, str(other))


@pytest.fixture()
def static_student(tmp_path):
    """A static student over the teacher's vocabulary onto 8 dims: seeded random rows, bias 0."""
    table = np.random.default_rng(0).normal(size=(30522, 8)).astype(np.float32)
    path = tmp_path / "static"
    save_static(path, {"teacher": TEACHER, "max_length": 256}, {"table": table, "bias": np.zeros(8)}, dtype="float32")
    return path


def test_an_untrained_residual_student_is_its_static_side(tmp_path, static_student):
    """The residual head starts at zero: the student's vector is the static student's, exactly as it opens."""
    model = tiny_student("mean")
    residual = student_module(model.bert, 8, "mean", residual=True).eval()
    path = write_student(residual, tmp_path / "s", static=str(static_student))
    got = OnnxQueryEncoder(str(path), threads=1).encode_queries(QUERIES)
    assert np.abs(got - StaticQueryEncoder(str(static_student)).encode_queries(QUERIES)).max() < 1e-5


def test_residual_export_equals_the_torch_model(tmp_path, static_student):
    import torch

    model = tiny_student("mean")
    residual = student_module(model.bert, 8, "mean", residual=True).eval()
    with torch.no_grad():
        residual.head.weight.normal_(0.0, 0.2)
    path = write_student(residual, tmp_path / "s", static=str(static_student))
    got = OnnxQueryEncoder(str(path), threads=1).encode_queries(QUERIES)
    static = StaticQueryEncoder(str(static_student)).encode_queries(QUERIES)
    want = torch_vectors(residual, QUERIES, static)
    assert np.abs(got - want).max() < 1e-3
    assert np.abs(got - static).max() > 0.05  # the contextual part does move the vectors


def test_training_measures_dev_every_n_steps_without_changing_the_training():
    """10 texts in batches of 2 are 5 steps an epoch: measuring every 2 steps adds the steps 2, 4 (epoch 0.4,
    0.8) and 6, 8 (1.2, 1.6) between the epochs' own measurements, reports each, and trains the same weights."""
    import torch

    from twostage_search.benchmarks.studies.query_bert_train import BertSettings, train

    rows = teacher_token_ids([f"query number {i}" for i in range(10)])
    targets = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)

    def run(every):
        model, reports, saved = tiny_student("mean"), [], []
        settings = BertSettings(layers=1, epochs=2, batch=2, listwise=0.0, warmup=2, measure_every=every)
        history = train(
            model,
            rows,
            targets,
            [None] * 10,
            {},
            settings,
            lambda m: {"measured": 1.0},
            lambda m, epoch: saved.append(epoch),
            progress=lambda h: reports.append(len(h)),
        )
        return model, history, reports, saved

    measured, history, reports, saved = run(2)
    assert [h["epoch"] for h in history] == [0, 0.4, 0.8, 1, 1.2, 1.6, 2]
    assert [h["step"] for h in history] == [0, 2, 4, 5, 6, 8, 10]
    assert reports == [1, 2, 3, 4, 5, 6, 7]
    assert saved == [1, 2]
    plain, history, _, _ = run(0)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for (name, a), (_, b) in zip(measured.state_dict().items(), plain.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

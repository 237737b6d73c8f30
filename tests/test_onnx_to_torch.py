"""ONNX BERT classifier → torch: a tiny BERT classifier fixture (random weights, not a real model) exported to
ONNX, dynamically quantised by ONNX Runtime, and read back; likewise its bare encoder (a ``BertModel`` export,
as bi-encoders ship)."""

import shutil

import numpy as np
import pytest

from tests.helpers import export_bare_encoder, need, tiny_bert_classifier

need("torch", "export")
need("transformers", "export")
need("onnx", "export")
need("onnxruntime", "export")

from twostage_search.engine.errors import InputError
from twostage_search.rerankers.onnx_to_torch import (
    encoder_from_onnx,
    encoder_state_dict_from_onnx,
    state_dict_from_onnx,
    torch_from_onnx,
)

LINEARS = ("attention.self.query", "attention.self.key", "attention.output.dense", "intermediate.dense")


@pytest.fixture(scope="module")
def tiny_bert():
    """A 2-layer BERT classifier, hidden 32, 4 heads, seeded random weights."""
    import torch

    model = tiny_bert_classifier(vocab=50, hidden=32, layers=2, heads=4, intermediate=48, positions=40)
    with torch.no_grad():  # every tensor distinct (the exporter merges equal initializers, e.g. all-zero biases)
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def _export(model, path):
    import torch

    ids = torch.tensor([[2, 7, 9, 3, 11, 12, 3]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    mask = torch.ones_like(ids)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask, types),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return ids, mask, types


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    fp32 = folder / "fp32.onnx"
    inputs = _export(tiny_bert, fp32)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(folder / "int8.onnx"), weight_type=QuantType.QInt8)
    quantize_dynamic(str(fp32), str(folder / "int8-channel.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    return folder, inputs


def _quantized_tensors(path):
    """Every quantised initializer of the graph dequantised here with numpy: name → scale * (q - zero point),
    per tensor or per column of a [in, out] matrix (embedding tables: per tensor or along the node's axis)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    out = {}
    for name, q in init.items():
        if not name.endswith("_quantized"):
            continue
        base = name[: -len("_quantized")]
        scale = init[base + "_scale"].astype(np.float64)
        zp = init.get(base + "_zero_point", np.zeros_like(scale)).astype(np.float64)
        if scale.ndim == 1 and scale.size > 1:
            axis = 0 if scale.size == q.shape[0] and q.shape[0] != q.shape[1] else 1
            shape = [1, 1]
            shape[axis] = scale.size
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        out[name] = (scale * (q.astype(np.float64) - zp)).astype(np.float32), float(np.max(scale))
    return out


def test_fp32_graph_gives_the_same_weights_and_config(tiny_bert, exported):
    folder, _ = exported
    state, shape = state_dict_from_onnx(folder / "fp32.onnx")
    assert (shape.num_hidden_layers, shape.hidden_size, shape.num_attention_heads) == (2, 32, 4)
    assert (shape.intermediate_size, shape.vocab_size, shape.max_position_embeddings) == (48, 50, 40)
    assert (shape.type_vocab_size, shape.num_labels) == (2, 1)
    original = {k: v.numpy() for k, v in tiny_bert.state_dict().items() if not k.endswith("position_ids")}
    assert set(state) == set(original)
    for key, value in original.items():
        assert np.array_equal(state[key], value), key


@pytest.mark.parametrize("graph", ["int8.onnx", "int8-channel.onnx"])
def test_quantized_weights_are_dequantized_exactly(tiny_bert, exported, graph):
    folder, _ = exported
    state, _ = state_dict_from_onnx(folder / graph)
    dequantized = _quantized_tensors(folder / graph)
    original = tiny_bert.state_dict()
    checked = 0
    for key in [f"bert.encoder.layer.{i}.{m}.weight" for i in range(2) for m in LINEARS] + [
        "bert.pooler.dense.weight",
        "bert.embeddings.word_embeddings.weight",
    ]:
        want = original[key].numpy()
        # the graph's matrices are [in, out] (torch's transposed); embedding tables keep their orientation
        candidates = {
            name: (arr if "embeddings" in key else arr.T, step)
            for name, (arr, step) in dequantized.items()
            if (arr if "embeddings" in key else arr.T).shape == want.shape
        }
        name = min(candidates, key=lambda n: float(np.abs(candidates[n][0] - want).max()))
        arr, step = candidates[name]
        assert np.abs(arr - want).max() <= step / 2 * (1 + 1e-5), key  # the quantisation's own rounding bound
        assert np.array_equal(state[key], arr), key
        checked += 1
    assert checked == 10


def test_fp32_graph_converts_to_a_model_with_the_same_logits(tiny_bert, exported):
    import torch

    folder, (ids, mask, types) = exported
    model = torch_from_onnx(folder / "fp32.onnx")
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        want = tiny_bert(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert torch.equal(got, want)  # the same weights through the same torch code


def test_converted_model_loads_and_scores(exported):
    import torch

    folder, (ids, mask, types) = exported
    model = torch_from_onnx(folder / "int8.onnx")
    assert model.config.num_attention_heads == 4 and not model.training
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.shape == (1, 1)


def test_a_graph_that_is_not_a_bert_classifier_is_refused(tmp_path):
    import torch

    path = tmp_path / "linear.onnx"
    with torch.no_grad():
        torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), dynamo=False)
    with pytest.raises(InputError, match="not a BERT sequence classifier"):
        state_dict_from_onnx(path)


@pytest.fixture(scope="module")
def bare_encoder(tiny_bert, tmp_path_factory):
    """The classifier's own ``BertModel`` (no pooler output used) exported bare: inputs → last hidden state."""
    import torch

    path = tmp_path_factory.mktemp("tiny-encoder") / "fp32.onnx"
    ids = torch.tensor([[2, 7, 9, 3, 11, 12, 3]])
    export_bare_encoder(tiny_bert.bert, path, ids)
    return path, ids


def test_bare_encoder_graph_gives_the_encoder_weights(tiny_bert, bare_encoder):
    path, _ = bare_encoder
    state, shape = encoder_state_dict_from_onnx(path)
    assert (shape.num_hidden_layers, shape.num_attention_heads, shape.num_labels) == (2, 4, 0)
    original = {
        k.removeprefix("bert."): v.numpy()
        for k, v in tiny_bert.state_dict().items()
        if k.startswith("bert.") and not k.startswith("bert.pooler") and not k.endswith("position_ids")
    }
    assert set(state) == set(original)
    for key, value in original.items():
        assert np.array_equal(state[key], value), key


def test_truncated_encoder_gives_the_hidden_states_after_its_layers(tiny_bert, bare_encoder):
    import torch

    path, ids = bare_encoder
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    with torch.no_grad():
        states = tiny_bert.bert(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        for layers in (1, 2):
            model = encoder_from_onnx(path, layers)
            assert model.config.num_hidden_layers == layers and not model.training
            got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            assert torch.equal(got, states.hidden_states[layers])  # the same weights through the same code
    with pytest.raises(InputError, match="cannot keep 3"):
        encoder_from_onnx(path, 3)
    with pytest.raises(InputError, match="not a BERT sequence classifier"):
        state_dict_from_onnx(path)  # no classifier in a bare encoder


def _word_tokenizer(path, words):
    """A word-level ``tokenizer.json``: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, then ``words``; BERT's template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4} | {w: 5 + i for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(path))
    return vocab


def test_dense_onnx_model_becomes_a_sentence_transformer(tiny_bert, bare_encoder, tmp_path):
    import torch

    need("sentence_transformers", "rerank")
    from sentence_transformers import SentenceTransformer

    from twostage_search.rerankers.onnx_to_torch import sentence_transformer_from_onnx

    onnx_path, _ = bare_encoder
    model_dir = tmp_path / "dense"
    model_dir.mkdir()
    shutil.copy(onnx_path, model_dir / "model.onnx")
    vocab = _word_tokenizer(model_dir / "tokenizer.json", [f"w{i}" for i in range(40)])
    out = sentence_transformer_from_onnx(str(model_dir), tmp_path / "st", pooling="cls")
    texts = ["w1 w2 w3", "w7", "w30 w31 w5 w5 w9"]
    got = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    # expected: the original torch model's [CLS] state, unit length, computed without the code under test
    for text, vector in zip(texts, got, strict=True):
        ids = torch.tensor([[2] + [vocab[w] for w in text.split()] + [3]])
        with torch.no_grad():
            cls = tiny_bert.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, 0].numpy()
        assert np.allclose(vector, cls / np.linalg.norm(cls), atol=1e-5)
    # a complete directory is kept as it is; a bad pooling is refused before any work
    stamp = (out / "modules.json").stat().st_mtime_ns
    assert sentence_transformer_from_onnx(str(model_dir), out) == out
    assert (out / "modules.json").stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="pooling"):
        sentence_transformer_from_onnx(str(model_dir), tmp_path / "other", pooling="max")
    assert not (tmp_path / "other").exists()

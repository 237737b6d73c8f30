"""Turn an ONNX BERT cross-encoder (fp32, or dynamic-INT8 as ONNX Runtime's ``quantize_dynamic`` writes it)
back into a trainable ``transformers`` ``BertForSequenceClassification``, or an ONNX BERT bi-encoder (a bare
``BertModel`` export such as the bundled bge-small's) back into a ``BertModel``, optionally its first layers only.

The bundled ms-marco-MiniLM-L-12 cross-encoder ships only as a dynamic-INT8 ONNX graph; fine-tuning it needs
torch weights. Each weight is read from the graph's initializers (``onnx.numpy_helper``) and, where it is
stored quantised, dequantised exactly as the graph does: ``scale * (q - zero_point)``, per tensor or per
output column as the graph stores the scale. Where each tensor goes is read from the graph, not from its
initializer names (the quantiser names most matrices ``onnx::MatMul_N``):

- a ``MatMulInteger`` / ``MatMul`` node's weight (``[in, out]``) belongs to the module its node name is
  scoped under (``/bert/encoder/layer.0/attention/self/query/MatMul_quant`` → ``…query``) and is transposed
  to torch's ``[out, in]``; a ``Gemm`` honours ``transB``; the bias is the initializer of the ``Add`` that
  follows it (through the ``Cast``/``Mul`` rescaling);
- an embedding table is the data input of a ``Gather`` (followed by a ``DequantizeLinear`` when quantised);
- LayerNorm weights and biases keep their ``state_dict`` names.

A classifier's modules sit under ``bert.`` (``bert.encoder.layer.0…``); a bare encoder's at the root
(``encoder.layer.0…``) or under ``bert.`` where the export wrapped it; the root is read from the graph.

The configuration (layers, hidden size, intermediate size, vocabulary, positions, labels) comes from the
tensors' shapes; the number of attention heads from the first layer's head-split ``Reshape``. Dequantised
weights are the INT8 model's weights exactly; the torch model computes in fp32, so its logits differ from
the INT8 session's by the activation quantisation only.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require, sentence_transformers_part

log = logging.getLogger(__name__)

_LAYER = re.compile(r"^(?:bert\.)?encoder\.layer\.(\d+)\.")
_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")
_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


@dataclass(frozen=True, slots=True)
class BertShape:
    """What the graph's tensors say about the model (the ``BertConfig`` fields that are not defaults)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    num_labels: int
    layer_norm_eps: float


class _Graph:
    """Initializers, constants and producer/consumer maps of one ONNX graph."""

    def __init__(self, model: Any) -> None:
        numpy_helper = require("onnx.numpy_helper", "export")
        graph = model.graph
        self.nodes = list(graph.node)
        self.init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.const = dict(self.init)
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.consumers: dict[str, list[Any]] = {}
        self.producer: dict[str, Any] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
            for name in n.output:
                self.producer[name] = n

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.init[name])


def _scope(node: Any) -> str:
    """The module a node is scoped under: ``/bert/pooler/dense/Gemm_MatMul_quant`` → ``bert.pooler.dense``."""
    path = node.name.strip("/").split("/")
    return ".".join(path[:-1])


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """``scale * (q - zero_point)`` in fp32; a 1-D scale applies along ``axis`` of ``q``."""
    zp = np.zeros_like(scale, dtype=np.int32) if zero_point is None else zero_point.astype(np.int32)
    s = scale.astype(np.float32)
    if s.ndim == 1 and s.size > 1:
        shape = [1] * q.ndim
        shape[axis] = s.size
        s, zp = s.reshape(shape), zp.reshape(shape)
    return (s * (q.astype(np.int32) - zp).astype(np.float32)).astype(np.float32)


def _linear_bias(g: _Graph, out: str, depth: int = 4) -> np.ndarray | None:
    """The initializer added to a matmul's output, following its ``Cast``/``Mul`` rescaling."""
    for _ in range(depth):
        users = g.consumers.get(out, [])
        if len(users) != 1:
            return None
        user = users[0]
        if user.op_type == "Add":
            other = [i for i in user.input if i != out]
            return g.array(other[0]) if other and other[0] in g.init else None
        if user.op_type not in ("Cast", "Mul"):
            return None
        out = user.output[0]
    return None


def _linears(g: _Graph) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{module: (weight [out, in], bias)} of every matmul whose weight is an initializer."""
    found: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for n in g.nodes:
        if n.op_type == "MatMulInteger" and n.input[1] in g.init:
            q = g.array(n.input[1])
            scale_name = n.input[1].removesuffix("_quantized") + "_scale"
            if scale_name not in g.init:
                raise InputError(f"quantised weight {n.input[1]!r} has no scale initializer {scale_name!r}")
            zp = g.array(n.input[3]) if len(n.input) > 3 and n.input[3] in g.init else None
            w = _dequantize(q, g.array(scale_name), zp, axis=1).T
        elif n.op_type == "MatMul" and n.input[1] in g.init:
            w = g.array(n.input[1]).astype(np.float32).T
        elif n.op_type == "Gemm" and n.input[1] in g.init:
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            w = g.array(n.input[1]).astype(np.float32)
            w = w if trans_b else w.T
            bias = g.array(n.input[2]).astype(np.float32) if len(n.input) > 2 and n.input[2] in g.init else None
            found[_scope(n)] = (np.ascontiguousarray(w), bias)
            continue
        else:
            continue
        found[_scope(n)] = (np.ascontiguousarray(w), _linear_bias(g, n.output[0]))
    return found


def _embeddings(g: _Graph, root: str) -> dict[str, np.ndarray]:
    """{``<root>embeddings.X.weight``: table} of each ``Gather`` over an initializer, dequantised where quantised."""
    out: dict[str, np.ndarray] = {}
    for n in g.nodes:
        if n.op_type != "Gather" or n.input[0] not in g.init:
            continue
        name = next((e for e in _EMBEDDINGS if e in n.input[0] or e in n.name), None)
        if name is None:
            continue
        table = g.array(n.input[0])
        users = g.consumers.get(n.output[0], [])
        if users and users[0].op_type == "DequantizeLinear":
            dq = users[0]
            zp = g.array(dq.input[2]) if len(dq.input) > 2 and dq.input[2] in g.init else None
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            table = _dequantize(table, g.array(dq.input[1]), zp, axis=axis)
        out[f"{root}embeddings.{name}.weight"] = table.astype(np.float32)
    return out


def _heads(g: _Graph, hidden: int, root: str) -> int:
    """Attention heads, from layer 0's head-split ``Reshape`` target ``[batch, seq, heads, head_dim]``."""
    for n in g.nodes:
        if n.op_type != "Reshape" or not n.name.strip("/").startswith(f"{_path(root)}encoder/layer.0/attention/self/"):
            continue
        shape = n.input[1]
        if shape in g.const:
            dims = [int(v) for v in np.ravel(g.const[shape])]
        elif shape in g.producer and g.producer[shape].op_type == "Concat":
            parts = [g.const.get(i) for i in g.producer[shape].input]
            dims = [int(np.ravel(p)[0]) if p is not None and np.size(p) == 1 else -1 for p in parts]
        else:
            continue
        # [batch, seq, heads, head_dim]; newer exports write heads as -1
        if len(dims) == 4 and dims[3] > 0 and hidden % dims[3] == 0 and dims[2] in (-1, hidden // dims[3]):
            return hidden // dims[3]
    raise InputError("cannot read the number of attention heads from the graph (no head-split Reshape in layer 0)")


def _layer_norm_eps(g: _Graph, root: str) -> float:
    """The LayerNorm epsilon: a ``LayerNormalization`` attribute, or the constant added to the variance."""
    for n in g.nodes:
        if n.op_type == "LayerNormalization":
            return float(next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5))
        if n.op_type == "Add" and n.name.strip("/").startswith(f"{_path(root)}embeddings/LayerNorm/"):
            for i in n.input:
                if i in g.const and np.size(g.const[i]) == 1 and 0 < float(np.ravel(g.const[i])[0]) < 1e-3:
                    return float(np.ravel(g.const[i])[0])
    return 1e-12


def _path(root: str) -> str:
    """A state-dict root (``bert.`` or empty) as a node-name scope (``bert/`` or empty)."""
    return root.replace(".", "/")


def _read(path: str | Path, *, classifier: bool) -> tuple[dict[str, np.ndarray], BertShape]:
    """The fp32 state dict of a BERT classifier (``classifier``) or bare encoder graph, and its shape."""
    onnx = require("onnx", "export")
    g = _Graph(onnx.load(str(path)))
    state: dict[str, np.ndarray] = {k: v.astype(np.float32) for k, v in g.init.items() if v.dtype == np.float32}
    linears = _linears(g)
    root = "bert." if any(m.startswith("bert.encoder.") for m in linears) else ""
    state |= _embeddings(g, root)
    for module, (w, b) in linears.items():
        state[f"{module}.weight"] = w
        if b is not None:
            state[f"{module}.bias"] = b.astype(np.float32)
    layers = sorted({int(m.group(1)) for k in state if (m := _LAYER.match(k))})
    what = "a BERT sequence classifier" if classifier else "a BERT encoder"
    word = f"{root}embeddings.word_embeddings.weight"
    if word not in state or (classifier and "classifier.weight" not in state) or not layers:
        raise InputError(f"{path}: not {what} (no word embeddings, encoder layers{' or classifier' * classifier})")
    vocab, hidden = state[word].shape
    intermediate = f"{root}encoder.layer.0.intermediate.dense.weight"
    shape = BertShape(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        num_hidden_layers=len(layers),
        num_attention_heads=_heads(g, int(hidden), root),
        intermediate_size=int(state[intermediate].shape[0]) if intermediate in state else 0,
        max_position_embeddings=int(
            state.get(f"{root}embeddings.position_embeddings.weight", np.zeros((0, 0))).shape[0]
        ),
        type_vocab_size=int(state.get(f"{root}embeddings.token_type_embeddings.weight", np.zeros((0, 0))).shape[0]),
        num_labels=int(state["classifier.weight"].shape[0]) if classifier else 0,
        layer_norm_eps=_layer_norm_eps(g, root),
    )
    expected = _expected_keys(shape, root, classifier=classifier)
    missing = [k for k in expected if k not in state]
    if missing:
        raise InputError(f"{path}: not {what} this reader knows; missing {missing[:5]}")
    # an encoder's keys are a BertModel's (no ``bert.``), whether or not the export scoped it under one
    return {(k if classifier else k.removeprefix(root)): state[k] for k in expected}, shape


def state_dict_from_onnx(path: str | Path) -> tuple[dict[str, np.ndarray], BertShape]:
    """The fp32 ``BertForSequenceClassification`` state dict of an ONNX BERT classifier, and its shape.

    Raises :class:`InputError` when the graph is not a BERT sequence classifier (a tensor is missing).
    """
    return _read(path, classifier=True)


def encoder_state_dict_from_onnx(path: str | Path) -> tuple[dict[str, np.ndarray], BertShape]:
    """The fp32 ``BertModel`` state dict (no pooler) of a bare ONNX BERT encoder, and its shape (0 labels).

    Raises :class:`InputError` when the graph is not a BERT encoder (a tensor is missing).
    """
    return _read(path, classifier=False)


def _expected_keys(shape: BertShape, root: str = "bert.", *, classifier: bool = True) -> list[str]:
    keys = [f"{root}embeddings.{e}.weight" for e in _EMBEDDINGS]
    keys += [f"{root}embeddings.LayerNorm.weight", f"{root}embeddings.LayerNorm.bias"]
    for i in range(shape.num_hidden_layers):
        for m in (*_LINEARS, *_NORMS):
            keys += [f"{root}encoder.layer.{i}.{m}.weight", f"{root}encoder.layer.{i}.{m}.bias"]
    if not classifier:
        return keys
    return [*keys, "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]


def _config(shape: BertShape, layers: int) -> Any:
    transformers = require("transformers", "export")
    return transformers.BertConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        type_vocab_size=shape.type_vocab_size,
        num_labels=max(shape.num_labels, 1),
        layer_norm_eps=shape.layer_norm_eps,
        hidden_act="gelu",
        attn_implementation="eager",
    )


def _load(model: Any, state: dict[str, np.ndarray], path: str | Path) -> None:
    torch = require("torch", "export")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    result = model.load_state_dict(tensors, strict=False)
    unexpected = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if unexpected or result.unexpected_keys:
        raise InputError(f"{path}: weights do not fit BERT ({unexpected[:3]} missing, {result.unexpected_keys[:3]})")


def torch_from_onnx(path: str | Path) -> Any:
    """A ``BertForSequenceClassification`` (fp32, eval mode) holding the ONNX graph's weights, dequantised."""
    transformers = require("transformers", "export")
    state, shape = state_dict_from_onnx(path)
    model = transformers.BertForSequenceClassification(_config(shape, shape.num_hidden_layers))
    _load(model, state, path)
    log.info(
        "ONNX %s → torch BERT: %d layers, hidden %d, %d heads",
        path,
        shape.num_hidden_layers,
        shape.hidden_size,
        shape.num_attention_heads,
    )
    return model.eval()


def encoder_from_onnx(path: str | Path, layers: int | None = None, *, layer_ids: list[int] | None = None) -> Any:
    """A ``BertModel`` without pooler (fp32, eval mode) holding a bare ONNX encoder's weights, dequantised;
    with ``layers``, only its embeddings and first ``layers`` transformer layers (a truncated encoder); with
    ``layer_ids`` (0-based, distinct, in that order), its embeddings and those layers renumbered 0, 1, …
    (DistilBERT's initialisation: e.g. ``[1, 3, 5, 7, 9, 11]``, every other layer, the last one kept)."""
    transformers = require("transformers", "export")
    state, shape = encoder_state_dict_from_onnx(path)
    if layer_ids is None:
        keep = shape.num_hidden_layers if layers is None else layers
        if not 1 <= keep <= shape.num_hidden_layers:
            raise InputError(f"{path}: has {shape.num_hidden_layers} layers, cannot keep {keep}")
        layer_ids = list(range(keep))
    elif layers is not None:
        raise InputError("give layers or layer_ids, not both")
    if (
        not layer_ids
        or len(set(layer_ids)) != len(layer_ids)
        or not all(0 <= i < shape.num_hidden_layers for i in layer_ids)
    ):
        raise InputError(f"{path}: has layers 0-{shape.num_hidden_layers - 1}, cannot keep {layer_ids}")
    new_id = {old: new for new, old in enumerate(layer_ids)}
    kept: dict[str, np.ndarray] = {}
    for key, value in state.items():
        match = _LAYER.match(key)
        if match is None:
            kept[key] = value
        elif int(match.group(1)) in new_id:
            kept[f"encoder.layer.{new_id[int(match.group(1))]}.{key[match.end() :]}"] = value
    model = transformers.BertModel(_config(shape, len(layer_ids)), add_pooling_layer=False)
    _load(model, kept, path)
    log.info("ONNX %s → torch BertModel: layers %s of %d", path, layer_ids, shape.num_hidden_layers)
    return model.eval()


def tokenizer_from_file(path: str | Path) -> Any:
    """A ``transformers`` fast tokenizer built from a ``tokenizer.json`` (such as the bundled model's)."""
    transformers = require("transformers", "export")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def sentence_transformer_from_onnx(model_spec: str, out: str | Path, *, pooling: str = "cls") -> Path:
    """Write a sentence-transformers directory (transformer, ``pooling``, normalisation) holding a dense ONNX
    model's weights, dequantised (``bundled:bge-small-en-int8`` → a trainable fp32 bge-small), atomically;
    an existing complete one at ``out`` is kept. Its vectors are the ONNX model's up to the activation
    quantisation (no query prefix is added: a student trained from it learns without one)."""
    from twostage_search.engine.atomic import atomic_directory
    from twostage_search.engine.dense import POOLINGS, dense_model_files

    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    out = Path(out)
    if (out / "modules.json").is_file():
        return out
    st = require("sentence_transformers", "rerank")
    modules_of = sentence_transformers_part("modules", "rerank")
    model_path, tokenizer_path = dense_model_files(model_spec)
    encoder = encoder_from_onnx(model_path)
    with atomic_directory(out, overwrite=True, marker="modules.json") as tmp:
        hf = tmp / "_hf"
        encoder.save_pretrained(str(hf))
        tokenizer_from_file(tokenizer_path).save_pretrained(str(hf))
        modules = [
            modules_of.Transformer(str(hf)),
            modules_of.Pooling(encoder.config.hidden_size, pooling_mode=pooling),
            modules_of.Normalize(),
        ]
        st.SentenceTransformer(modules=modules, device="cpu").save(str(tmp))
        shutil.rmtree(hf)
    log.info("%s → sentence-transformers %s (%s pooling)", model_spec, out, pooling)
    return out

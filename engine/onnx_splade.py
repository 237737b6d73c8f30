"""SPLADE on ONNX Runtime: the masked LM's trunk, then the vocabulary projection of real tokens only.

A text's weights are ``w_j = log1p(relu(max_i logit_ij))`` over its real (unpadded) tokens ``i`` — the same
formula as :class:`~engine.encoders.SpladeMLM` (max-pooling first is exact because ``log1p(relu(·))`` is
monotone). One ONNX Runtime session computes the hidden states that enter the projection (``trunk.onnx``,
a padded batch); a second (:func:`head_session`) projects each text's real tokens only, and only onto the
terms asked for: :meth:`OnnxSplade.restricted` limits the projection to a vocabulary (e.g. the terms an
index holds), which makes a query cheaper to encode and changes nothing for a search of that index.
``precision="int8"`` runs the whole model as one dynamically quantised graph instead. See
:mod:`engine.splade_export` for the export and its cache. Once exported, encoding needs only
``onnxruntime``, ``onnx`` (to build the projection's graph), ``tokenizers`` and numpy;
``InferenceSession.run`` may be called from many threads at once.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Collection, Sequence
from typing import Any, Literal

import numpy as np

from twostage_search.engine.onnx_session import cpu_session
from twostage_search.engine.optional import require
from twostage_search.engine.splade_export import MARKER, export_splade, int8_model
from twostage_search.engine.splade_side import check_limits, vocabulary_subset
from twostage_search.engine.types import SparseVector

Precision = Literal["fp32", "int8"]
PRECISIONS = ("fp32", "int8")


class OnnxSplade:
    """SPLADE side encoder on ONNX Runtime; same arguments and output as :class:`~engine.encoders.SpladeMLM`.

    Args:
        model: ``bundled:NAME`` or a local HF-format masked-LM directory (exported on first use).
        max_length: tokens per text; longer texts are truncated.
        batch_size: texts per run (texts are sorted by length, so a batch pads little).
        top_n: keep only the ``top_n`` heaviest terms per text (``None`` keeps all).
        threads: ONNX Runtime intra-op threads (``None``: one per physical core).
        precision: ``fp32`` (the exported graph, same weights as torch) or ``int8`` (dynamic quantisation:
            several times faster on CPUs with VNNI, weights differ by up to a few tenths).
        split: fp32 only: run the trunk, then the projection of each text's real tokens only (the default,
            when the export could split the model) or ``False``: the one-graph export, which projects
            padding too.
    """

    def __init__(
        self,
        model: str,
        *,
        max_length: int = 256,
        batch_size: int = 8,
        top_n: int | None = None,
        threads: int | None = None,
        precision: Precision = "fp32",
        split: bool = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        check_limits(max_length=max_length, batch_size=batch_size, top_n=top_n)
        if threads is not None and threads < 1:
            raise ValueError("threads must be ≥ 1")
        require("onnxruntime", "splade")  # fail before any work when the extra is missing
        tokenizers = require("tokenizers", "splade")
        self.model_spec = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.top_n = top_n
        self.threads = threads
        self.precision = precision
        folder = export_splade(model)
        info = json.loads((folder / MARKER).read_text())
        self._names: list[str] = list(info["inputs"])
        self._tokenizer_file = folder / "tokenizer.json"
        self._tokenizer = self._load_tokenizer(tokenizers)
        self._vocab = [self._tokenizer.id_to_token(i) or "" for i in range(int(info["vocab_size"]))]
        self._keep: np.ndarray | None = None  # vocabulary ids the output is limited to (None: all)
        self._out_vocab = self._vocab  # the terms of the output columns
        # fp32 with a separable projection: the trunk, then the projection of each text's real tokens, in
        # two ONNX Runtime sessions (``_head`` projects onto the columns in use of ``_projection``).
        # Otherwise one graph. Spinning pool threads would take the cores from the search between
        # queries: off (also why the projection is not numpy's: OpenBLAS's threads spin).
        self._projection: tuple[np.ndarray, np.ndarray] | None = None
        self._head: Any = None
        if precision == "fp32" and split and info.get("head"):
            graph = folder / "trunk.onnx"
            with np.load(folder / "head.npz") as arrays:
                self._projection = (arrays["weight"], arrays["bias"])
            self._head = head_session(*self._projection)
        else:
            graph = folder / "model.onnx" if precision == "fp32" else int8_model(folder)
        self._graph = graph
        self._session: Any = cpu_session(graph, threads=threads, extra="splade", spin=False)

    def _load_tokenizer(self, tokenizers: Any) -> Any:
        # Configured once, here, and never mutated afterwards: encoding is then thread-safe.
        tokenizer = tokenizers.Tokenizer.from_file(str(self._tokenizer_file))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)
        return tokenizer

    def with_limits(self, *, max_length: int, top_n: int | None, threads: int | None = None) -> OnnxSplade:
        """The same model with other length/pruning limits (e.g. for the query side); a session of its own
        when ``threads`` differs."""
        other = copy.copy(self)
        other.max_length, other.top_n = max_length, top_n
        other._tokenizer = other._load_tokenizer(require("tokenizers", "splade"))
        if threads is not None and threads != self.threads:
            other.threads = threads
            other._session = cpu_session(self._graph, threads=threads, extra="splade", spin=False)
        return other

    def restricted(self, terms: Collection[str]) -> OnnxSplade:
        """The same encoder with its output limited to ``terms`` (the others are never computed).

        For a search this changes nothing but speed when ``terms`` are all the terms an index holds: a query
        term the index lacks matches nothing. ``top_n`` then keeps the heaviest of ``terms``. Terms outside
        the model's vocabulary are ignored.
        """
        current = None if self._keep is None else self._keep.tolist()
        ids, out_vocab = vocabulary_subset(self._vocab, current, terms)
        keep = np.array(ids, dtype=np.int64)
        other = copy.copy(self)
        other._keep = keep
        other._out_vocab = out_vocab
        if self._projection is not None:
            weight, bias = self._projection
            other._head = head_session(np.ascontiguousarray(weight[:, keep]), bias[keep])
        return other

    @property
    def vocabulary(self) -> Sequence[str]:
        """The terms of the output columns of :meth:`weights` (the whole vocabulary unless restricted)."""
        return self._out_vocab

    def config(self) -> dict[str, Any]:
        return {
            "kind": "splade-mlm",
            "backend": "onnx",
            "precision": self.precision,
            "model": self.model_spec,
            "max_length": self.max_length,
            "top_n": self.top_n,
        }

    def weights(self, texts: Sequence[str]) -> np.ndarray:
        """Dense SPLADE weights, shape ``(len(texts), len(self.vocabulary))``, in input order."""
        batch = self._tokenizer.encode_batch(list(texts)) if len(texts) > 1 else [self._tokenizer.encode(texts[0])]
        encoded = [(e.ids, e.type_ids) for e in batch]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i][0]))
        out = np.empty((len(texts), len(self._out_vocab)), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encoded[i][0]) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for row, i in enumerate(idx):
                n = len(encoded[i][0])
                ids[row, :n], types[row, :n] = encoded[i]
                mask[row, :n] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            result = self._session.run(None, {n: feed[n] for n in self._names})[0]
            if self._head is None:
                out[idx] = result if self._keep is None else result[:, self._keep]
                continue
            for row, i in enumerate(idx):  # real tokens only: no padding projected
                out[i] = self._head.run(None, {"hidden": result[row, : len(encoded[i][0])]})[0]
        if self._head is not None:  # the head returns max logits: w = log1p(relu(·))
            np.maximum(out, 0.0, out=out)
            np.log1p(out, out=out)
        return out

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        if not texts:
            return []
        return [sparse_from_dense(row, self._out_vocab, self.top_n) for row in self.weights(texts)]


def head_session(weight: np.ndarray, bias: np.ndarray) -> Any:
    """An ONNX Runtime session projecting one text's hidden states ``(tokens, hidden)`` onto ``weight``'s
    columns: ``max`` over tokens of ``hidden @ weight``, plus ``bias`` (adding it after the max is exact).
    Its threads (one per core) sleep between runs."""
    require("onnx", "splade")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["hidden", "weight"], ["logits"]),
            helper.make_node("ReduceMax", ["logits"], ["max"], axes=[0], keepdims=0),
            helper.make_node("Add", ["max", "bias"], ["scores"]),
        ],
        "splade-head",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["tokens", weight.shape[0]])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [weight.shape[1]])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return cpu_session(model.SerializeToString(), threads=None, extra="splade", spin=False)


def sparse_from_dense(row: np.ndarray, vocab: Sequence[str], top_n: int | None = None) -> SparseVector:
    """The non-zero entries of one dense weight row as a :class:`SparseVector` (the ``top_n`` heaviest)."""
    nz = np.flatnonzero(row > 0)
    if top_n is not None and len(nz) > top_n:
        nz = nz[np.argpartition(-row[nz], top_n - 1)[:top_n]]
    return SparseVector.from_dict({vocab[int(t)]: float(row[t]) for t in nz})

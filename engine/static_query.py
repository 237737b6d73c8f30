"""A static dense query side: one vector per vocabulary token, a query is the mean of its tokens' vectors.

The idea is Model2Vec's (Tulkens and van Dongen, 2024: "distil" a sentence encoder into a token lookup
table by encoding every vocabulary token on its own), made asymmetric: only the *queries* are encoded
statically, into the space of the full bi-encoder that encoded the index's documents. The table starts
as the full model's query vector of each single token (``[CLS] prefix token [SEP]``) and is then tuned so
that the mean of a text's token rows points where the full model's query vector of that text points
(cosine loss on training texts; ``benchmarks/studies/query_static.py``). A query costs one tokenizer call
and a table lookup instead of a 12-layer pass.

Vector of a query with word-piece ids ``t_1..t_n`` (no special tokens, no prefix; the tokenizer is the
teacher's, truncated at ``max_length``): ``v = bias + (1/n) Σ_i table[t_i]``, then ``v / |v|``; with
per-token weights ``w`` (positive, one per vocabulary entry) the mean is weighted,
``v = bias + Σ_i w[t_i] table[t_i] / Σ_i w[t_i]``. A text with no tokens gets ``bias / |bias|``.
Optionally a residual MLP refines it: ``u = v + W2 · relu(W1 · v + b1) + b2``, then ``u / |u|`` (the
"asymmetric residual").

A static student is a directory with ``student.json`` (``kind: "static"``, the teacher's model spec, pooling
and query prefix, as every student names its teacher) and ``table.npz``: ``table`` ``(vocab, dim)``
(stored float16 or float32, used as float32), ``bias`` ``(dim,)``, optionally ``weights`` ``(vocab,)``
(float32), and, for the residual, ``w1`` ``(dim, hidden)``, ``b1``, ``w2`` ``(hidden, dim)``, ``b2``.
:func:`save_static` writes one atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.atomic import atomic_directory
from twostage_search.engine.dense import dense_model_files
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.optional import require

log = logging.getLogger(__name__)

STATIC_KIND = "static"
STUDENT_FILE = "student.json"
TABLE_FILE = "table.npz"
RESIDUAL = ("w1", "b1", "w2", "b2")


def read_static(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``student.json`` and the arrays of a static student directory, checked for shape."""
    file, arrays = path / STUDENT_FILE, path / TABLE_FILE
    if not file.is_file() or not arrays.is_file():
        raise InputError(f"query encoder {path}: needs {STUDENT_FILE} and {TABLE_FILE}")
    config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    if config.get("kind") != STATIC_KIND:
        raise InputError(f"query encoder {path}: kind must be {STATIC_KIND!r}")
    with np.load(arrays, allow_pickle=False) as stored:
        weights = {name: np.asarray(stored[name], dtype=np.float32) for name in stored.files}
    check_arrays(weights, where=str(path))
    return config, weights


def check_arrays(weights: Mapping[str, np.ndarray], *, where: str) -> None:
    """Raise :class:`InputError` unless ``weights`` hold a 2-d table, a matching bias and all or none of the MLP."""
    table, bias = weights.get("table"), weights.get("bias")
    if table is None or bias is None or table.ndim != 2 or bias.shape != (table.shape[1],):
        raise InputError(f"static query encoder {where}: needs table (vocab, dim) and bias (dim,)")
    token_weights = weights.get("weights")
    if token_weights is not None and (
        token_weights.shape != (table.shape[0],) or not bool(np.all(np.isfinite(token_weights) & (token_weights > 0)))
    ):
        raise InputError(f"static query encoder {where}: weights must be ({table.shape[0]},), finite and positive")
    present = [name for name in RESIDUAL if name in weights]
    if present and len(present) != len(RESIDUAL):
        raise InputError(f"static query encoder {where}: the residual MLP needs all of {', '.join(RESIDUAL)}")
    if present:
        dim, hidden = table.shape[1], weights["w1"].shape[-1]
        shapes = {"w1": (dim, hidden), "b1": (hidden,), "w2": (hidden, dim), "b2": (dim,)}
        if any(weights[name].shape != shape for name, shape in shapes.items()):
            raise InputError(f"static query encoder {where}: residual shapes must be {shapes}")


def save_static(
    path: str | Path,
    config: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    *,
    dtype: str = "float16",
) -> None:
    """Write a static student directory atomically (``student.json`` + ``table.npz``; ``kind`` is set here).

    The table is stored as ``dtype`` (float16 halves the file; the vectors then differ from float32 ones
    by rounding only); bias and MLP stay float32.
    """
    check_arrays(weights, where=str(path))
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in weights.items()}
    arrays["table"] = arrays["table"].astype(np.dtype(dtype))
    with atomic_directory(path, marker=STUDENT_FILE) as tmp:
        np.savez(tmp / TABLE_FILE, **arrays)  # type: ignore[arg-type]
        document = {**config, "kind": STATIC_KIND, "table_dtype": dtype}
        (tmp / STUDENT_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def static_vectors(token_ids: Sequence[Sequence[int]], weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """Unit query vectors of tokenised texts under ``weights`` (see the module docstring)."""
    table, bias, token_weights = weights["table"], weights["bias"], weights.get("weights")
    out = np.zeros((len(token_ids), table.shape[1]), dtype=np.float32)
    for row, ids in enumerate(token_ids):
        index = np.asarray(ids, dtype=np.int64)
        if not len(index):
            out[row] = bias
        elif token_weights is None:
            out[row] = bias + table[index].mean(axis=0)
        else:
            w = token_weights[index]
            out[row] = bias + (w @ table[index]) / w.sum()
    if "w1" in weights:
        hidden = np.maximum(out @ weights["w1"] + weights["b1"], 0.0)
        out = out + hidden @ weights["w2"] + weights["b2"]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.asarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


class StaticQueryEncoder:
    """Queries → unit vectors in a full bi-encoder's space from a token table (no neural network pass).

    Args:
        spec: ``bundled:NAME`` or a static student directory (``student.json`` + ``table.npz``).

    Each query's vector depends on its own tokens only. Thread-safe: the tokenizer is configured once and
    the arrays are never written after loading.
    """

    def __init__(self, spec: str) -> None:
        tokenizers = require("tokenizers", "dense")
        config, weights = read_static(Path(resolve_model(spec)))
        teacher = config["teacher"]
        _, tokenizer_file = dense_model_files(teacher["model"])
        tokenizer: Any = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=int(config.get("max_length", 256)))
        tokenizer.no_padding()
        if tokenizer.get_vocab_size() != weights["table"].shape[0]:
            raise InputError(
                f"query encoder {spec}: table has {weights['table'].shape[0]} rows, "
                f"the tokenizer of {teacher['model']} {tokenizer.get_vocab_size()} tokens"
            )
        self.spec = spec
        self.student = config
        self.query_prefix = str(teacher["query_prefix"])
        self.dim = int(weights["table"].shape[1])
        self._tokenizer = tokenizer
        self._weights = weights
        log.info("static query encoder %s: %d×%d table onto %s", spec, *weights["table"].shape, teacher["model"])

    @staticmethod
    def read_config(path: Path) -> dict[str, Any]:
        """``student.json`` of a static student directory (arrays checked too)."""
        return read_static(path)[0]

    def config(self) -> dict[str, Any]:
        return {
            "query_encoder": self.spec,
            "kind": STATIC_KIND,
            "residual": "w1" in self._weights,
            "token_weights": "weights" in self._weights,
        }

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids of ``texts`` without special tokens or the teacher's prefix."""
        return [list(e.ids) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit vectors in the teacher's space, each independent of the others."""
        return static_vectors(self.token_ids(texts), self._weights)

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(ids) for ids in self.token_ids(texts)) if texts else 0

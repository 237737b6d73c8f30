"""A contextual dense query side: a small fine-tuned BERT that encodes queries into a full bi-encoder's space.

The student is the teacher's own embeddings and first few transformer layers, with pooling and a linear head,
trained end to end so that its vector of a query points where the teacher's (the full model with its query
prefix) points, and so that it ranks the teacher's top documents as the teacher does
(``benchmarks/studies/query_bert.py``). Unlike the frozen truncated trunk of
:mod:`~twostage_search.engine.dense_query`, every layer is retrained; unlike the static table of
:mod:`~twostage_search.engine.static_query`, a query's tokens see each other. A query costs one pass through
``layers`` layers over ``[CLS] text [SEP]`` (no prefix) instead of 12 over the prefixed text.

A student directory holds ``student.json`` (``kind: "onnx-encoder"``, the teacher's model spec, pooling and
query prefix, as every student names its teacher; the student's own layers, pooling, dimension and maximum
length; optionally, for the record only, which of the teacher's layers it started from, ``layer_ids``, and
how its head started, ``head``) and ``model.onnx``: inputs ``input_ids`` and ``attention_mask`` (int64,
``[batch, tokens]``), output ``[batch, dim]`` unit vectors (pooling, head and normalisation are in the graph).
The tokenizer is the teacher's. :func:`student_document` builds the ``student.json`` document.

A residual student names a static student (``"static": "bundled:bge-small-query-static"``): its graph takes a
third input, ``static`` (float32 ``[batch, dim]``, that student's unit vector of the same query), and adds its
own head's output to it before normalising, a contextual correction of the static vector.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.dense import dense_model_files
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.onnx_session import cpu_session
from twostage_search.engine.optional import require
from twostage_search.engine.static_query import StaticQueryEncoder

log = logging.getLogger(__name__)

ONNX_KIND = "onnx-encoder"
STUDENT_FILE = "student.json"
MODEL_FILE = "model.onnx"


def student_document(
    teacher: Mapping[str, Any],
    *,
    layers: int,
    pooling: str,
    dim: int,
    max_length: int,
    parameters: int,
    int8: bool,
    training: Mapping[str, Any],
    static: str | None = None,
    layer_ids: Sequence[int] | None = None,
    head: str | None = None,
) -> dict[str, Any]:
    """The ``student.json`` document of a contextual student (see the module docstring)."""
    return {
        **({"static": static} if static else {}),
        "kind": ONNX_KIND,
        "teacher": dict(teacher),
        "layers": layers,
        **({"layer_ids": list(layer_ids)} if layer_ids is not None else {}),
        **({"head": head} if head is not None else {}),
        "pooling": pooling,
        "dim": dim,
        "max_length": max_length,
        "parameters": parameters,
        "weights": "int8 (ONNX Runtime dynamic quantisation)" if int8 else "float32",
        "training": dict(training),
    }


def read_config(path: Path) -> dict[str, Any]:
    """``student.json`` of a contextual student directory, checked."""
    file = path / STUDENT_FILE
    if not file.is_file() or not (path / MODEL_FILE).is_file():
        raise InputError(f"query encoder {path}: needs {STUDENT_FILE} and {MODEL_FILE}")
    config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    if config.get("kind") != ONNX_KIND:
        raise InputError(f"query encoder {path}: kind must be {ONNX_KIND!r}")
    missing = [k for k in ("teacher", "dim", "max_length") if k not in config]
    if missing:
        raise InputError(f"query encoder {path}: {STUDENT_FILE} lacks {', '.join(missing)}")
    return config


class OnnxQueryEncoder:
    """Queries → unit vectors in a full bi-encoder's space from a small contextual student (ONNX).

    Args:
        spec: ``bundled:NAME`` or a student directory (``student.json`` + ``model.onnx``).
        threads: ONNX Runtime intra-op threads (``None``: ONNX Runtime's default).

    Queries go one per forward pass, so a query's vector never depends on the others encoded with it.
    Thread-safe like :class:`~twostage_search.engine.dense.DenseEncoder`.
    """

    def __init__(self, spec: str, *, threads: int | None = None) -> None:
        tokenizers = require("tokenizers", "dense")
        path = Path(resolve_model(spec))
        config = read_config(path)
        teacher = config["teacher"]
        _, tokenizer_file = dense_model_files(teacher["model"])
        tokenizer: Any = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=int(config["max_length"]))
        tokenizer.no_padding()
        self.spec = spec
        self.student = config
        self.query_prefix = str(teacher["query_prefix"])
        self.dim = int(config["dim"])
        self._tokenizer = tokenizer
        self._session: Any = cpu_session(path / MODEL_FILE, threads=threads, extra="dense")
        self._static = StaticQueryEncoder(str(config["static"])) if config.get("static") else None
        if self._static is not None and self._static.student["teacher"]["model"] != teacher["model"]:
            raise InputError(f"query encoder {spec}: its static student has another teacher")
        log.info("query encoder %s: %s layers onto %s", spec, config.get("layers"), teacher["model"])

    @staticmethod
    def read_config(path: Path) -> dict[str, Any]:
        return read_config(path)

    def config(self) -> dict[str, Any]:
        return {"query_encoder": self.spec, "kind": ONNX_KIND, "layers": self.student.get("layers")}

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit vectors in the teacher's space, each independent of the others."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, encoding in enumerate(self._tokenizer.encode_batch(list(texts))):
            ids = np.asarray([encoding.ids], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if self._static is not None:
                feed["static"] = self._static.encode_queries([texts[row]])
            vector = np.asarray(self._session.run(None, feed)[0])
            out[row] = vector[0] / max(float(np.linalg.norm(vector[0])), 1e-12)
        return out

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(e.ids) for e in self._tokenizer.encode_batch(list(texts))) if texts else 0

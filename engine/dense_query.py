"""Cheaper dense query sides: a truncated bi-encoder with a linear head onto the full model's query space,
and an LRU cache of query vectors.

A dense index's documents are encoded once by the full model (bge-small-en-v1.5, 12 layers); every query
used to pay one 12-layer pass too. :class:`TruncatedQueryEncoder` runs only the first ``layers`` layers of
that same ONNX graph (cut from it when the encoder opens, so no second copy of the weights is shipped) and
maps the pooled hidden state with a linear head, fitted by ridge regression onto the full model's query
vectors of query-like training texts, into the document space; a query then costs about ``layers / 12``
of a full pass. This is knowledge distillation onto the teacher's embedding space (Hinton et al. 2015;
for sentence embeddings, Reimers and Gurevych, "Making Monolingual Sentence Embeddings Multilingual using
Knowledge Distillation", EMNLP 2020), restricted to a linear map over a frozen, shortened trunk.

A student is a directory with ``student.json`` (what the teacher is, which layer, pooling, how the head was
fitted) and ``head.npz`` (``weight``: ``(in, dim)``, ``bias``: ``(dim,)``). It names its teacher's model
spec; an index accepts a student only if the student's teacher is the encoder that built the index
(:func:`check_teacher`). ``benchmarks/studies/query_student.py`` fits one and measures it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from cachetools import LRUCache

from twostage_search.engine.bert_query import ONNX_KIND, OnnxQueryEncoder
from twostage_search.engine.dense import dense_model_files
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.onnx_session import cpu_session
from twostage_search.engine.optional import require
from twostage_search.engine.static_query import STATIC_KIND, StaticQueryEncoder

log = logging.getLogger(__name__)

STUDENT_FILE = "student.json"
HEAD_FILE = "head.npz"
KIND = "truncated-linear"
POOLINGS = ("cls", "mean", "cls+mean")
FULL = "full"  # the query-encoder setting that keeps the index's own (full) encoder


@runtime_checkable
class QueryEncoder(Protocol):
    """What a dense retriever needs from its query side: unit vectors in the index's space."""

    dim: int
    query_prefix: str

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> int: ...


def layer_output(layers: int) -> str:
    """The name of the hidden state after ``layers`` transformer layers in an exported BERT graph."""
    return f"/encoder/layer.{layers - 1}/output/LayerNorm/Add_1_output_0"


def truncated_graph(model: Path, layers: int) -> bytes:
    """The serialised sub-graph of ``model`` from its inputs to the hidden state after ``layers`` layers."""
    onnx = require("onnx", "dense")
    graph = onnx.load(str(model))
    target = layer_output(layers)
    if not any(target in node.output for node in graph.graph.node):
        raise InputError(f"{model} has no tensor {target!r}: not a BERT-style export with {layers}+ layers")
    inputs = [i.name for i in graph.graph.input]
    extracted = onnx.utils.Extractor(graph).extract_model(inputs, [target])
    return bytes(extracted.SerializeToString())


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """``(batch, in)`` features of ``(batch, tokens, hidden)`` states: CLS, mean over real tokens, or both."""
    cls = hidden[:, 0, :]
    weights = mask[:, :, None].astype(np.float32)
    mean = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    if pooling == "cls":
        return np.asarray(cls, dtype=np.float32)
    if pooling == "mean":
        return np.asarray(mean, dtype=np.float32)
    return np.concatenate([cls, mean], axis=1).astype(np.float32)


def read_student(path: Path) -> dict[str, Any]:
    """``student.json`` of a student directory, checked."""
    file = path / STUDENT_FILE
    if not file.is_file() or not (path / HEAD_FILE).is_file():
        raise InputError(f"query encoder {path}: needs {STUDENT_FILE} and {HEAD_FILE}")
    config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    if config.get("kind") != KIND or config.get("pooling") not in POOLINGS:
        raise InputError(f"query encoder {path}: kind must be {KIND!r} with pooling in {POOLINGS}")
    return config


def student_config(path: Path) -> dict[str, Any]:
    """``student.json`` of a truncated (:func:`read_student`), static
    (:mod:`~twostage_search.engine.static_query`) or contextual (:mod:`~twostage_search.engine.bert_query`)
    student directory, checked."""
    file = path / STUDENT_FILE
    kind = json.loads(file.read_text(encoding="utf-8")).get("kind") if file.is_file() else None
    if kind == STATIC_KIND:
        return StaticQueryEncoder.read_config(path)
    if kind == ONNX_KIND:
        return OnnxQueryEncoder.read_config(path)
    return read_student(path)


def open_student(
    spec: str, *, threads: int | None = None
) -> TruncatedQueryEncoder | StaticQueryEncoder | OnnxQueryEncoder:
    """The query encoder a student spec names: :class:`TruncatedQueryEncoder`, a static or a contextual one."""
    kind = student_config(Path(resolve_model(spec)))["kind"]
    if kind == STATIC_KIND:
        return StaticQueryEncoder(spec)
    if kind == ONNX_KIND:
        return OnnxQueryEncoder(spec, threads=threads)
    return TruncatedQueryEncoder(spec, threads=threads)


def student_for(
    spec: str, encoder: dict[str, Any], loaded: object = None
) -> TruncatedQueryEncoder | StaticQueryEncoder | OnnxQueryEncoder:
    """The student ``spec`` names for an index built with ``encoder`` (its config): ``loaded`` when it is that
    student already, else opened; :func:`check_teacher` either way."""
    if isinstance(loaded, TruncatedQueryEncoder | StaticQueryEncoder | OnnxQueryEncoder) and loaded.spec == spec:
        student = loaded
    else:
        student = open_student(spec)
    check_teacher(student.student, encoder)
    return student


def check_teacher(student: dict[str, Any], encoder: dict[str, Any]) -> None:
    """Raise :class:`InputError` unless ``student`` was fitted onto the encoder (config) that built an index."""
    teacher = student["teacher"]
    for key in ("model", "pooling", "query_prefix"):
        if teacher.get(key) != encoder.get(key):
            raise InputError(
                f"query encoder fitted onto {key}={teacher.get(key)!r}, "
                f"but the index was built with {encoder.get(key)!r}"
            )


class TruncatedQueryEncoder:
    """Queries → unit vectors in a full bi-encoder's space from its first layers and a fitted linear head.

    Args:
        spec: ``bundled:NAME`` or a student directory (``student.json`` + ``head.npz``).
        threads: ONNX Runtime intra-op threads (``None``: ONNX Runtime's default).

    Queries go one per forward pass with the teacher's prefix, as the full model's do. Thread-safe like
    :class:`~twostage_search.engine.dense.DenseEncoder`.
    """

    def __init__(self, spec: str, *, threads: int | None = None) -> None:
        tokenizers = require("tokenizers", "dense")
        path = Path(resolve_model(spec))
        config = read_student(path)
        teacher = config["teacher"]
        model, tokenizer_file = dense_model_files(teacher["model"])
        head = np.load(path / HEAD_FILE)
        self.spec = spec
        self.student = config
        self.layers = int(config["layers"])
        self.pooling = str(config["pooling"])
        self.query_prefix = str(teacher["query_prefix"])
        self._weight = np.asarray(head["weight"], dtype=np.float32)
        self._bias = np.asarray(head["bias"], dtype=np.float32)
        self.dim = int(self._weight.shape[1])
        tokenizer: Any = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=int(teacher.get("max_length", 512)))
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._session: Any = cpu_session(truncated_graph(model, self.layers), threads=threads, extra="dense")
        self._inputs = {i.name for i in self._session.get_inputs()}
        log.info("query encoder %s: %d layers of %s, %s pooling", spec, self.layers, teacher["model"], self.pooling)

    def config(self) -> dict[str, Any]:
        return {"query_encoder": self.spec, "layers": self.layers, "pooling": self.pooling}

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """The pooled trunk outputs (the head's inputs) of ``texts``, prefix added, one per pass."""
        out = []
        for encoding in self._tokenizer.encode_batch([self.query_prefix + t for t in texts]):
            ids = np.asarray([encoding.ids], dtype=np.int64)
            mask = np.ones_like(ids)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
            out.append(pool(hidden, mask, self.pooling)[0])
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit vectors in the teacher's space, each independent of the others."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # one row at a time, so a query's vector does not depend on the others encoded with it
        mapped = np.stack([row @ self._weight for row in self.features(texts)]) + self._bias
        norms = np.linalg.norm(mapped, axis=1, keepdims=True)
        return np.asarray(mapped / np.maximum(norms, 1e-12), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(e.ids) for e in self._tokenizer.encode_batch(list(texts))) if texts else 0


class CachedQueryEncoder:
    """A query encoder with an LRU cache of the last ``maxsize`` query vectors (repeated queries cost a lookup).

    Keyed by the query text; the cached arrays are read-only. Thread-safe (one lock around the cache).
    """

    def __init__(self, encoder: QueryEncoder, maxsize: int = 1024) -> None:
        if maxsize < 1:
            raise InputError(f"query cache size must be at least 1, got {maxsize}")
        self.encoder = encoder
        self.dim = encoder.dim
        self.query_prefix = encoder.query_prefix
        self._cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing: list[int] = []
        with self._lock:
            for i, text in enumerate(texts):
                vector = self._cache.get(text)
                if vector is None:
                    missing.append(i)
                else:
                    out[i] = vector
            self.hits += len(texts) - len(missing)
            self.misses += len(missing)
        if missing:
            fresh = self.encoder.encode_queries([texts[i] for i in missing])
            out[missing] = fresh
            with self._lock:
                for i, vector in zip(missing, fresh, strict=True):
                    kept = vector.copy()
                    kept.setflags(write=False)
                    self._cache[texts[i]] = kept
        return out

    def count_tokens(self, texts: Sequence[str]) -> int:
        return self.encoder.count_tokens(texts)

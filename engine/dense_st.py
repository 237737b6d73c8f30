"""Dense text encoder on a local sentence-transformers model directory (torch): the ``sentence-transformers``
dense encoder kind.

It serves bi-encoders trained here (e.g. the student of the graded chain, ``twostage_search.benchmarks.studies.
student``) or any sentence-transformers directory a user has: ``twostage index --backend dense-flat --encoder
sentence-transformers --model DIR``. The directory is what ``SentenceTransformer.save`` writes
(``modules.json``, ``config.json``, the weights); its own modules decide the pooling. Vectors are L2
normalised, so the inner product is the cosine, as for the default ONNX encoder.

An index records the directory (absolute path) and a SHA-256 of its weight files, and refuses to search with a
directory whose weights changed since the build (the vectors would no longer match the queries').
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.errors import InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.optional import require

log = logging.getLogger(__name__)

KIND = "sentence-transformers"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def model_directory(spec: str) -> Path:
    """The local sentence-transformers directory of ``spec`` (``bundled:NAME`` or a path); never a hub name."""
    path = Path(resolve_model(spec))
    if not (path / "modules.json").is_file():
        raise InputError(f"{spec!r} is not a local sentence-transformers model directory (no modules.json)")
    return path.resolve()


def weights_digest(path: Path) -> str:
    """SHA-256 over the names and bytes of the directory's weight files (sorted), to detect a changed model."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise InputError(f"{path}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class SentenceTransformerEncoder:
    """Texts → L2-normalised float32 vectors with a local sentence-transformers model (CPU torch by default).

    Args:
        model: a directory written by ``SentenceTransformer.save`` (or ``bundled:NAME`` of one).
        query_prefix: prepended to every query (default none; the model's training decides).
        max_length: tokens per text (longer texts are truncated).
        batch_size: texts per forward pass (sorted by length, padded per batch; fp32, so a vector does not
            depend on its batch-mates beyond float rounding).
        device: torch device.
        sha256: the weights' digest an index recorded; a different directory content is an :class:`InputError`.
        threads: accepted for the same call as the ONNX encoder; torch keeps its own thread pool.
    """

    kind = KIND

    def __init__(
        self,
        model: str,
        *,
        query_prefix: str = "",
        max_length: int = 256,
        batch_size: int = 32,
        device: str = "cpu",
        sha256: str | None = None,
        threads: int | None = None,
        **_: Any,
    ) -> None:
        del threads
        if batch_size < 1 or max_length < 8:
            raise InputError("batch_size must be ≥ 1 and max_length ≥ 8")
        st = require("sentence_transformers", "rerank")
        path = model_directory(model)
        digest = weights_digest(path)
        if sha256 is not None and sha256 != digest:
            raise InputError(f"the model at {path} changed since the index was built (weights digest differs)")
        self.model_spec = model if model.startswith("bundled:") else str(path)
        self.query_prefix = query_prefix
        self.max_length = max_length
        self.batch_size = batch_size
        self.sha256 = digest
        self._model: Any = st.SentenceTransformer(str(path), device=device)
        self._model.max_seq_length = max_length
        dimension = getattr(self._model, "get_embedding_dimension", None)  # sentence-transformers ≥ 6
        dim = dimension() if dimension else self._model.get_sentence_embedding_dimension()
        if not dim:
            raise InputError(f"{path}: the model does not declare its embedding dimension")
        self.dim = int(dim)
        log.info("sentence-transformers encoder %s, %d-d, max_length=%d", path, self.dim, max_length)

    def config(self) -> dict[str, Any]:
        """What an index records to re-create this encoder (``kind`` selects it in the dense-encoder registry)."""
        return {
            "kind": KIND,
            "model": self.model_spec,
            "query_prefix": self.query_prefix,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "sha256": self.sha256,
        }

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_docs(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit vectors for documents, in input order."""
        return self._encode(texts)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit vectors for queries (prefix added)."""
        return self._encode([self.query_prefix + t for t in texts])

    def count_tokens(self, texts: Sequence[str]) -> int:
        if not texts:
            return 0
        tokenizer = self._model.tokenizer
        encoded = tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return sum(len(ids) for ids in encoded)

"""The cost curve's inputs: Home Depot titles in a seeded order, the query sample, and the real encodings.

The corpus order is a seeded permutation of the 54,667 product titles; a size ``N`` uses the first ``N``
documents of it (real titles) followed by synthetic documents (``benchmarks.synthetic``). The real encodings
cover the first ``R`` titles of that order: they are made once, in chunks of :data:`CHUNK` titles, the dense
(bge-small) and SPLADE chunks alternating, and cached under ``<cache>/encoded/`` so an interrupted run
resumes and a rerun costs nothing. Queries: the test part of the committed query split of Home Depot
(``benchmarks.graded.split_queries``, train 40% / dev 20% / test 40%), a seeded sample.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.graded import split_queries
from twostage_search.engine.atomic import atomic_write_text
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.types import Document, Query, SparseVector

log = logging.getLogger(__name__)

CHUNK = 1000
ORDER_SEED = 0
PARTS = {"train": 0.4, "dev": 0.2, "test": 0.4}


@dataclass(frozen=True, slots=True)
class Encoded:
    """Real encodings of the first ``len(dense)`` documents of the corpus order, and their encoding rates."""

    dense: np.ndarray
    sparse: list[SparseVector]
    dense_docs_per_s: float
    sparse_docs_per_s: float


def titles(dataset: Path) -> list[Document]:
    """The corpus documents in the seeded order (:data:`ORDER_SEED`)."""
    docs = sorted(read_corpus(find_file(dataset, "corpus")), key=lambda d: d.doc_id)
    random.Random(ORDER_SEED).shuffle(docs)
    return docs


def query_sample(dataset: Path, n: int, seed: int = 0) -> list[Query]:
    """``n`` queries drawn (seeded) from the test part of the committed split, in id order."""
    ids = split_queries(list(read_qrels(dataset / "qrels" / "test.tsv")), PARTS)["test"]
    chosen = set(random.Random(seed).sample(list(ids), min(n, len(ids))))
    return [q for q in read_queries(find_file(dataset, "queries")) if q.query_id in chosen]


def _paths(cache: Path, k: int) -> tuple[Path, Path]:
    return cache / "encoded" / f"dense-{k:03d}.npy", cache / "encoded" / f"sparse-{k:03d}.json"


def encode(
    docs: list[Document], cache: Path, limit: int, *, dense_encoder: Any = None, sparse_encoder: Any = None
) -> None:
    """Encode the first ``limit`` documents in chunks of :data:`CHUNK` (a shorter last one), dense and SPLADE
    alternating, skipping the chunks already cached; records the seconds each chunk took."""
    (cache / "encoded").mkdir(parents=True, exist_ok=True)
    rates = cache / "encoded" / "rates.json"
    seconds: dict[str, float] = json.loads(rates.read_text()) if rates.is_file() else {}
    n = min(limit, len(docs))
    for k in range(-(-n // CHUNK)):
        dense_path, sparse_path = _paths(cache, k)
        texts = [d.full_text for d in docs[k * CHUNK : min((k + 1) * CHUNK, n)]]
        if not dense_path.is_file() or len(np.load(dense_path, mmap_mode="r")) != len(texts):
            if dense_encoder is None:
                from twostage_search.engine.dense import DenseEncoder

                dense_encoder = DenseEncoder()
            started = time.perf_counter()
            vectors = dense_encoder.encode_docs(texts)
            seconds[f"dense-{k:03d}"] = time.perf_counter() - started
            tmp = dense_path.with_name(f".{dense_path.name}.tmp")
            with tmp.open("wb") as out:
                np.save(out, vectors.astype(np.float32), allow_pickle=False)
            tmp.replace(dense_path)
        if not sparse_path.is_file() or len(json.loads(sparse_path.read_text(encoding="utf-8"))) != len(texts):
            if sparse_encoder is None:
                from twostage_search.engine.encoders import create_encoder

                sparse_encoder = create_encoder("splade")
            started = time.perf_counter()
            sparse = sparse_encoder.encode_docs(texts)
            seconds[f"sparse-{k:03d}"] = time.perf_counter() - started
            atomic_write_text(sparse_path, json.dumps([v.as_dict() for v in sparse]))
        atomic_write_text(rates, json.dumps(seconds, indent=1))
        log.info("encoded %d titles", k * CHUNK + len(texts))


def load_encoded(cache: Path) -> Encoded:
    """The cached chunks from the start of the order, up to the first missing or short one."""
    dense: list[np.ndarray] = []
    sparse: list[SparseVector] = []
    rates = (
        json.loads((cache / "encoded" / "rates.json").read_text())
        if (cache / "encoded" / "rates.json").is_file()
        else {}
    )
    spent = {"dense": 0.0, "sparse": 0.0}
    k = 0
    while all(p.is_file() for p in _paths(cache, k)):
        dense_path, sparse_path = _paths(cache, k)
        dense.append(np.load(dense_path, allow_pickle=False))
        sparse.extend(SparseVector.from_dict(v) for v in json.loads(sparse_path.read_text(encoding="utf-8")))
        for side in spent:
            spent[side] += rates[f"{side}-{k:03d}"]
        k += 1
        if len(dense[-1]) < CHUNK:
            break
    if not dense:
        raise FileNotFoundError(f"no encoded titles under {cache / 'encoded'}: run the study's encode first")
    count = sum(len(d) for d in dense)
    return Encoded(np.concatenate(dense), sparse, count / spent["dense"], count / spent["sparse"])


SEEDS = {"texts": 1, "sparse": 2, "dense": 3}


@dataclass(frozen=True, slots=True)
class Corpus:
    """The first ``size`` documents of the cost curve's corpus: the real ones, then synthetic ones.

    A document beyond the real titles gets a synthetic text (:class:`~benchmarks.synthetic.UnigramTexts`);
    a document beyond the ``len(encoded.dense)`` encoded titles gets synthetic vectors, drawn from the encoded
    ones (:class:`~benchmarks.synthetic.ResampledSparse`, :class:`~benchmarks.synthetic.GaussianDense`). The
    document at a position is the same at every size.
    """

    real: list[Document]
    encoded: Encoded
    size: int

    def synthetic_counts(self) -> dict[str, int]:
        """How many of the documents have a synthetic text and how many synthetic vectors."""
        return {"texts": max(0, self.size - len(self.real)), "vectors": max(0, self.size - len(self.encoded.dense))}

    def _ranges(self, real: int) -> Iterator[tuple[int, int, int]]:
        """(start, end, real part) of each block of :data:`CHUNK` positions (a block may straddle the boundary)."""
        for start in range(0, self.size, CHUNK):
            end = min(start + CHUNK, self.size)
            yield start, end, max(0, min(end, real) - start)

    def documents(self) -> Iterator[list[Document]]:
        from twostage_search.benchmarks.synthetic import UnigramTexts

        model = UnigramTexts([d.full_text for d in self.real]) if self.size > len(self.real) else None
        for start, end, real in self._ranges(len(self.real)):
            docs = self.real[start : start + real]
            if real < end - start and model is not None:
                first = start + real - len(self.real)
                texts = model.generate(end - start - real, seed=SEEDS["texts"], start=first)
                docs = docs + [Document(f"syn-{first + i:07d}", text) for i, text in enumerate(texts)]
            yield docs

    def dense_batches(self) -> Iterator[tuple[list[Document], np.ndarray]]:
        from twostage_search.benchmarks.synthetic import GaussianDense

        real_vectors = self.encoded.dense
        model = GaussianDense(real_vectors) if self.size > len(real_vectors) else None
        for (start, end, real), docs in zip(self._ranges(len(real_vectors)), self.documents(), strict=True):
            parts = [real_vectors[start : start + real]]
            if real < end - start and model is not None:
                first = start + real - len(real_vectors)
                parts.append(model.generate(end - start - real, seed=SEEDS["dense"], start=first))
            yield docs, np.concatenate(parts)

    def sparse_batches(self) -> Iterator[tuple[list[Document], list[SparseVector]]]:
        from twostage_search.benchmarks.synthetic import ResampledSparse

        real_vectors = self.encoded.sparse
        model = ResampledSparse(real_vectors) if self.size > len(real_vectors) else None
        for (start, end, real), docs in zip(self._ranges(len(real_vectors)), self.documents(), strict=True):
            vectors = real_vectors[start : start + real]
            if real < end - start and model is not None:
                first = start + real - len(real_vectors)
                vectors = vectors + list(model.generate(end - start - real, seed=SEEDS["sparse"], start=first))
            yield docs, vectors

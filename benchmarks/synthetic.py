"""Synthetic corpora drawn from a real one, for measuring cost at sizes beyond the real data (seeded).

Three generators, each a pure function of its inputs and a seed (numpy's PCG64), so a size is rebuilt
identically and a test can check what each keeps:

- :class:`UnigramTexts` (BM25's documents): a document's length in tokens is drawn from the real
  documents' lengths (white-space tokens, empirical distribution), and each token independently from the
  real tokens' frequencies (a unigram model). Keeps the token frequencies and the length distribution in
  expectation; word order and co-occurrence are not kept.
- :class:`ResampledSparse` (SPLADE's vectors): a document takes a real vector chosen uniformly at random,
  keeps its number of terms and its weights, and gets new terms: drawn one after another with probability
  proportional to each term's real document frequency, a term already drawn for this document being
  drawn again (successive sampling without replacement); its weights go to the new terms in a random
  order. Keeps the vector-length and weight distributions exactly in expectation, and each term's
  document frequency in proportion to the corpus size (exactly for one-term vectors; the most frequent
  terms fall slightly short, since a document holds a term at most once).
- :class:`GaussianDense` (dense vectors): rows of a Gaussian with the real vectors' mean and covariance,
  each divided by its length (unit vectors, as the encoder gives).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np

from twostage_search.engine.errors import InputError
from twostage_search.engine.types import SparseVector


def _rng(seed: int, start: int) -> np.random.Generator:
    """The generator of the block of documents beginning at ``start``: any block can be made on its own."""
    return np.random.Generator(np.random.PCG64([seed, start]))


class UnigramTexts:
    """Texts of white-space tokens drawn from ``texts``' unigram frequencies and length distribution."""

    def __init__(self, texts: Sequence[str]) -> None:
        tokens = Counter(t for text in texts for t in text.split())
        if not tokens:
            raise InputError("no tokens to draw from")
        self.vocabulary = sorted(tokens)
        counts = np.array([tokens[t] for t in self.vocabulary], dtype=np.float64)
        self.probabilities = counts / counts.sum()
        self.lengths = np.array(sorted(len(text.split()) for text in texts), dtype=np.int64)

    def generate(self, n: int, *, seed: int, start: int = 0) -> list[str]:
        """``n`` texts; the same ``(seed, start)`` gives the same texts."""
        rng = _rng(seed, start)
        lengths = rng.choice(self.lengths, size=n)
        ids = rng.choice(len(self.vocabulary), size=int(lengths.sum()), p=self.probabilities)
        words = self.vocabulary
        out: list[str] = []
        at = 0
        for length in lengths:
            out.append(" ".join(words[i] for i in ids[at : at + length]))
            at += int(length)
        return out


class ResampledSparse:
    """Sparse vectors: a real vector's length and weights, terms drawn by real document frequency."""

    def __init__(self, vectors: Sequence[SparseVector]) -> None:
        if not vectors:
            raise InputError("no vectors to draw from")
        df = Counter(t for v in vectors for t in v.terms)
        self.terms = sorted(df)
        counts = np.array([df[t] for t in self.terms], dtype=np.float64)
        self.probabilities = counts / counts.sum()
        self.vectors = list(vectors)
        if any(len(v) > len(self.terms) for v in self.vectors):  # pragma: no cover - a vector's terms are distinct
            raise InputError("a vector has more terms than the vocabulary")

    def generate(self, n: int, *, seed: int, start: int = 0) -> Iterator[SparseVector]:
        """``n`` vectors; the same ``(seed, start)`` gives the same vectors."""
        rng = _rng(seed, start)
        picks = rng.integers(len(self.vectors), size=n)
        buffer = np.empty(0, dtype=np.int64)
        at = 0
        for pick in picks:
            source = self.vectors[int(pick)]
            chosen: dict[int, None] = {}  # insertion-ordered set: the order of drawing
            while len(chosen) < len(source):
                if at == len(buffer):
                    buffer, at = rng.choice(len(self.terms), size=4096, p=self.probabilities), 0
                chosen.setdefault(int(buffer[at]))
                at += 1
            weights = rng.permutation(np.asarray(source.weights, dtype=np.float64))
            yield SparseVector.from_dict({self.terms[t]: float(w) for t, w in zip(chosen, weights, strict=True)})


class GaussianDense:
    """Unit vectors: Gaussian rows with ``vectors``' mean and covariance, each divided by its length."""

    def __init__(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or len(vectors) < 2:
            raise InputError("need a matrix of at least two vectors")
        data = np.asarray(vectors, dtype=np.float64)
        self.mean = data.mean(axis=0)
        self.covariance = np.cov(data, rowvar=False)
        values, vecs = np.linalg.eigh(self.covariance)  # a square root that a singular covariance allows
        self._root = vecs * np.sqrt(np.clip(values, 0.0, None))

    def generate(self, n: int, *, seed: int, start: int = 0) -> np.ndarray:
        """``n`` × dim float32 unit rows; the same ``(seed, start)`` gives the same rows."""
        rng = _rng(seed, start)
        rows: np.ndarray = self.mean + rng.standard_normal((n, len(self.mean))) @ self._root.T
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return rows.astype(np.float32)

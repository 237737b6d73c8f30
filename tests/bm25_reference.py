"""An independent BM25 for the BM25 backends' tests: Lucene 9's ``BM25Similarity`` written out per document
in numpy float32 scalars over already analysed tokens (not the code under test)."""

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from twostage_search.engine.types import Document

f32 = np.float32


def lucene_length(n: int) -> int:
    """A document length as Lucene's norms keep it: SmallFloat.intToByte4 then byte4ToInt."""

    def long_to_int4(i: int) -> int:
        bits = i.bit_length()
        if bits < 4:
            return i
        shift = bits - 4
        return ((i >> shift) & 0x07) | ((shift + 1) << 3)

    def int4_to_long(i: int) -> int:
        bits, shift = i & 0x07, (i >> 3) - 1
        return bits if shift == -1 else (bits | 0x08) << shift

    free = 255 - long_to_int4(2**31 - 1)
    encoded = n if n < free else free + long_to_int4(n - free)
    return encoded if encoded < free else free + int4_to_long(encoded - free)


def bm25(
    docs: Sequence[Document],
    doc_tokens: Sequence[Sequence[str]],
    query_tokens: Sequence[str],
    k1: float = 0.9,
    b: float = 0.4,
    decimals: int | None = 4,
) -> list[tuple[str, float]]:
    """Lucene 9 BM25Similarity, in float32 like Lucene, clause scores summed in double, ties by doc_id.

    idf = ln(1 + (N - df + 0.5) / (df + 0.5)); per term: w - w / (1 + tf / (k1 (1 - b + b dl / avgdl)))
    with w = boost · idf (a repeated query term is one clause boosted by its count), N the documents with a
    token. Anserini rounds scores to 4 ``decimals`` (``None``: Lucene's float32 score).
    """
    n = sum(1 for t in doc_tokens if t)
    avgdl = f32(sum(len(t) for t in doc_tokens) / n)
    df = Counter(t for tokens in doc_tokens for t in set(tokens))
    scores = {}
    for doc, tokens in zip(docs, doc_tokens, strict=True):
        tf = Counter(tokens)
        with np.errstate(divide="ignore"):  # k1 = 0: infinity, as in Java
            inv_norm = f32(1) / (f32(k1) * ((f32(1) - f32(b)) + f32(b) * f32(lucene_length(len(tokens))) / avgdl))
        total = 0.0
        for term, boost in Counter(query_tokens).items():
            if tf[term]:
                weight = f32(boost) * f32(math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5)))
                total += float(weight - weight / (f32(1) + f32(tf[term]) * inv_norm))
        if total > 0:
            score = float(f32(total))
            scores[doc.doc_id] = score if decimals is None else round(score, decimals)
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))

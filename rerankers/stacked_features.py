"""Features of (query, item) pairs for the stacked graded model (``graded-stacked``), all computable at serving
time from the query and its candidates' texts.

Signals, each one number per candidate, with their values relative to the query's candidates (``_gap`` to the
best, ``_rank`` scaled to [0, 1], ``_mean``, ``_z``; see :func:`~twostage_search.rerankers.graded.pair_features`):

- ``ce``: the MS MARCO cross-encoder's logit of (query, title), 64 tokens;
- ``ce_text``: the same cross-encoder's logit of (query, title + description), 128 tokens (the description's
  first part);
- ``bge``: the cosine of the query's and the item's (title + description) bge-small vectors, the ``dense-flat``
  encoder's;
- ``bm25``: Okapi BM25 (k1 1.2, b 0.75) of the query against the item's title + description, with the query's
  candidates as the collection (so it does not depend on which first stage found them; bm25s).

Lexical features, per pair (lower-cased ``\\w+`` words; a word's *stem* drops a final ``s``):

- those of the ``graded`` model (``title_overlap``, ``text_overlap``, ``query_terms``, ``title_terms``,
  ``title_all``, ``phrase``);
- ``desc_overlap``: the share of the query's words in the description; ``stem_overlap``: the share of the
  query's stems among the title's stems; ``title_coverage``: the share of the title's words that are query
  words; ``last_word``: 1 if the query's last word (its head noun, mostly) is in the title, by stem;
  ``text_phrase``: 1 if the query's words stand side by side, in order, in the title + description;
- ``char_overlap``: the share of the query's character trigrams (within words; a shorter word is its own
  trigram) found among the title's, which forgives spelling variants (``ipod``/``ipods``, ``bluray``/``blu``);
- numbers: ``query_numbers`` (1 if the query holds a number), ``numbers_found`` (the share of the query's
  numbers found in the item's title + description, 0 without numbers), ``units_found`` (the same for
  number + unit, e.g. ``32 gb`` = ``32gb``);
- lengths: ``title_len`` and ``desc_len``, log(1 + number of words).

Query-level features, the same for every candidate of a query (so that the trees can set their cut points by
query): ``candidates`` (log(1 + number of candidates)), ``ce_spread`` (the population standard deviation of the
candidates' ``ce`` logits) and ``all_words`` (the share of the candidates whose title + description hold every
query word).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from twostage_search.engine.optional import require
from twostage_search.engine.types import Candidate
from twostage_search.rerankers.graded import LEXICAL, MATCH, RELATIVE, pair_features

SIGNALS = ("ce", "ce_text", "bge", "bm25")
EXTRA = (
    "desc_overlap",
    "stem_overlap",
    "title_coverage",
    "last_word",
    "text_phrase",
    "char_overlap",
    "query_numbers",
    "numbers_found",
    "units_found",
    "title_len",
    "desc_len",
)
QUERY = ("candidates", "ce_spread", "all_words")
STACKED_FEATURES = tuple(f"{s}{r}" for s in SIGNALS for r in ("", *RELATIVE)) + LEXICAL + MATCH + EXTRA + QUERY
BM25_K1, BM25_B = 1.2, 0.75

_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"(\d+(?:[.,/]\d+)*)\s*([a-z]*)")


def tokens(text: str) -> list[str]:
    """Lower-cased ``\\w+`` words, in order."""
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """The word without a final ``s`` (``shoes`` → ``shoe``); words of up to three letters stay as they are."""
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def trigrams(words: Sequence[str]) -> set[str]:
    """The character trigrams of each word (a word of up to three letters is its own)."""
    return {w[i : i + 3] for w in words for i in range(max(len(w) - 2, 1))}


def numbers(text: str) -> tuple[set[str], set[str]]:
    """The numbers of a text and its number + unit pairs (``32 GB`` and ``32gb`` both give ``32gb``)."""
    found = _NUMBER.findall(text.lower())
    return {n for n, _ in found}, {n + u for n, u in found if u}


def _in_order(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(haystack[i : i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def _share(part: set[str], whole: set[str]) -> float:
    return len(part & whole) / len(part) if part else 0.0


def extra_features(query: str, item: Candidate) -> dict[str, float]:
    """The lexical features of one pair beyond the ``graded`` model's (see the module docstring)."""
    q_tokens, title_tokens, desc_tokens = tokens(query), tokens(item.title), tokens(item.text)
    q, title, desc = set(q_tokens), set(title_tokens), set(desc_tokens)
    title_stems = {stem(w) for w in title}
    q_numbers, q_units = numbers(query)
    i_numbers, i_units = numbers(f"{item.title} {item.text}")
    return {
        "desc_overlap": _share(q, desc),
        "stem_overlap": _share({stem(w) for w in q}, title_stems),
        "title_coverage": _share(title, q),
        "last_word": float(bool(q_tokens) and stem(q_tokens[-1]) in title_stems),
        "text_phrase": float(_in_order(title_tokens + desc_tokens, q_tokens)),
        "char_overlap": _share(trigrams(q_tokens), trigrams(title_tokens)),
        "query_numbers": float(bool(q_numbers)),
        "numbers_found": _share(q_numbers, i_numbers),
        "units_found": _share(q_units, i_units),
        "title_len": math.log1p(len(title_tokens)),
        "desc_len": math.log1p(len(desc_tokens)),
    }


def signals_read(features: Sequence[str]) -> tuple[str, ...]:
    """The signals (of :data:`SIGNALS`) whose values ``features`` read: a signal, its relative forms, and ``ce`` for
    ``ce_spread``."""
    wanted = set(features) | ({"ce"} if "ce_spread" in features else set())
    return tuple(s for s in SIGNALS if wanted & {s, *(s + r for r in RELATIVE)})


def query_features(query: str, candidates: Sequence[Candidate], ce: Sequence[float] | None) -> dict[str, float]:
    """The query-level features of ``query`` among ``candidates`` (``ce_spread`` only with the ``ce`` logits)."""
    q = set(tokens(query))
    every = [bool(q) and q <= set(tokens(f"{c.title} {c.text}")) for c in candidates]
    out = {"candidates": math.log1p(len(candidates)), "all_words": sum(every) / len(every) if every else 0.0}
    if ce is not None:
        out["ce_spread"] = float(np.std(np.asarray(ce, dtype=np.float64))) if len(ce) else 0.0
    return out


def bm25_scores(query: str, candidates: Sequence[Candidate]) -> list[float]:
    """Okapi BM25 of ``query`` against each candidate's title + description, the candidates being the collection.

    Lucene's variant (bm25s ``method="lucene"``): idf(t) = ln(1 + (N − n_t + 0.5) / (n_t + 0.5)) and a term scores
    idf(t) · tf / (tf + k1 · (1 − b + b · len / avglen)); query words in no candidate add nothing.
    """
    if not candidates:
        return []
    bm25s = require("bm25s", "graded")
    corpus = [tokens(f"{c.title} {c.text}") or [""] for c in candidates]
    model = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
    model.index(corpus, show_progress=False)
    vocab = model.vocab_dict
    words = [w for w in tokens(query) if w in vocab]
    if not words:
        return [0.0] * len(candidates)
    return [float(s) for s in np.asarray(model.get_scores(words), dtype=np.float64)]


def stacked_features(
    query: str, candidates: Sequence[Candidate], signals: Mapping[str, Sequence[float]]
) -> list[dict[str, float]]:
    """Every pair's features, in input order: ``signals`` (name → one value per candidate, e.g. ``ce`` and
    ``bge``) with their relative values, BM25 among the candidates (unless given), the lexical features and the
    query-level ones."""
    signals = dict(signals)
    if "bm25" not in signals:
        signals["bm25"] = bm25_scores(query, candidates)
    rows = pair_features(query, candidates, signals)
    shared = query_features(query, candidates, signals.get("ce"))
    for row, c in zip(rows, candidates, strict=True):
        row |= extra_features(query, c) | shared
    return rows

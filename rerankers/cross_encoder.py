"""Cross-encoder reranker (sentence-transformers ``CrossEncoder``; Nogueira & Cho 2019, "Passage
Re-ranking with BERT", arXiv:1901.04085): the query and each candidate are read together and scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

from twostage_search.engine.cost import StageCost
from twostage_search.engine.errors import TwoStageError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.optional import require
from twostage_search.engine.types import Candidate, Query, RankedList

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]

# The hub name of the general cross-encoder that ``onnx-cross-encoder`` runs offline (as INT8 ONNX). The
# torch backend needs its weights from the hub or a local copy; the offline in-domain option is
# ``bundled:ce-minilm-l6-scifact`` (trained on SciFact train), chosen by name only.
DEFAULT_TORCH_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L12-v2"


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a sentence-transformers ``CrossEncoder``.

    Args:
        model: a hub name (default ``cross-encoder/ms-marco-MiniLM-L12-v2``, where the hub or its cache is
            reachable), a local sentence-transformers/HF directory, or ``bundled:ce-minilm-l6-scifact``
            (trained here on SciFact train: in-domain on SciFact only). Offline, the general default is
            the ``onnx-cross-encoder`` reranker.
        batch_size: pairs per forward pass.
        max_length: tokens per pair; longer pairs are truncated (the passage side first).
        use_title: prepend the candidate's title to its text.
        precision: ``"fp32"`` or ``"bf16"`` weights.
        threads: torch intra-op threads (process-wide setting; ``None`` leaves it alone).
        device: torch device string.
    """

    name = "cross-encoder"

    def __init__(
        self,
        model: str = DEFAULT_TORCH_CROSS_ENCODER,
        *,
        batch_size: int = 32,
        max_length: int = 256,
        use_title: bool = True,
        precision: Precision = "fp32",
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1 or max_length < 8:
            raise ValueError("batch_size must be ≥ 1 and max_length ≥ 8")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        torch = require("torch", "rerank")
        st = require("sentence_transformers", "rerank")
        if threads is not None:
            torch.set_num_threads(threads)
        self.model_spec = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.use_title = use_title
        self.precision = precision
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # weights may be stored in fp16
        try:
            self._model = st.CrossEncoder(
                resolve_model(model), max_length=max_length, device=device, model_kwargs={"dtype": dtype}
            )
        except OSError as exc:  # not on disk and the hub is unreachable (HF_HUB_OFFLINE) or has no such model
            raise TwoStageError(
                f"cross-encoder model {model!r} not found ({exc}); offline, use the `onnx-cross-encoder` reranker "
                "or model='bundled:ce-minilm-l6-scifact' (in-domain on SciFact)"
            ) from exc
        self._model.eval()
        self._tokenizer: Any = self._model.tokenizer
        self._identity = torch.nn.Identity()

    def _passage(self, c: Candidate) -> str:
        return f"{c.title} {c.text}".strip() if self.use_title and c.title else c.text

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """Raw relevance logits for (query, passage) pairs, in input order."""
        if not passages:
            return []
        pairs = [(query, p) for p in passages]
        scores = self._model.predict(
            pairs,
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            activation_fn=self._identity,  # raw logits: no sigmoid saturation, no ties near 1.0
        )
        return [float(s) for s in scores]

    def count_tokens(self, query: str, passages: Sequence[str]) -> int:
        """Model input tokens the pairs occupy after truncation (what the cost model charges)."""
        if not passages:
            return 0
        enc = self._tokenizer(
            [query] * len(passages), list(passages), truncation="only_second", max_length=self.max_length
        )
        return sum(len(ids) for ids in enc["input_ids"])

    def score_candidates(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[float], StageCost]:
        """Logits for ``candidates`` (input order) and the cost of computing them."""
        started = time.perf_counter()
        passages = [self._passage(c) for c in candidates]
        scores = self.score(query.text, passages)
        tokens = self.count_tokens(query.text, passages)
        return scores, StageCost(
            "rerank", (time.perf_counter() - started) * 1000, docs=len(candidates), tokens_in=tokens
        )

    def rerank_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, StageCost]:
        scores, cost = self.score_candidates(query, candidates)
        return RankedList.from_scores(query.query_id, candidates, scores), cost

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return self.rerank_with_cost(query, candidates)[0]

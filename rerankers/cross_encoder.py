"""Cross-encoder reranker (sentence-transformers ``CrossEncoder``; Nogueira & Cho 2019, "Passage
Re-ranking with BERT", arXiv:1901.04085): the query and each candidate are read together and scored.

Thread-safe: a Hugging Face fast tokenizer keeps its truncation/padding settings on one shared Rust
object, so two threads tokenising at once can corrupt each other's batch. Each batch is tokenised once,
under a lock, and the forward pass (thread-safe in torch) runs outside it; the token count comes from
the same encoding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from twostage_search.engine.cost import StageCost
from twostage_search.engine.deadline import Deadline, PartialRanking
from twostage_search.engine.errors import TwoStageError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.optional import require, torch_with_threads
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
        torch = torch_with_threads(threads, "rerank")
        st = require("sentence_transformers", "rerank")
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
        self._torch = torch
        self._device = st.util.batch_to_device
        self._tokenizer_lock = threading.Lock()

    def _passage(self, c: Candidate) -> str:
        return c.full_text if self.use_title else c.text

    def _score_batch(self, query: str, passages: Sequence[str]) -> tuple[list[float], int]:
        """Raw logits of one batch of pairs and the input tokens they took (tokenised once, under the lock)."""
        with self._tokenizer_lock:
            features = self._model.preprocess([(query, p) for p in passages])
        tokens = int(features["attention_mask"].sum())
        features = self._device(features, self._model.device)
        with self._torch.inference_mode():
            scores = self._model(features)["scores"].float()  # raw logits: no sigmoid saturation near 1.0
        if scores.ndim > 1:
            scores = scores[:, 0]
        return [float(x) for x in scores.cpu()], tokens

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """Raw relevance logits for (query, passage) pairs, in input order."""
        out: list[float] = []
        for start in range(0, len(passages), self.batch_size):
            out.extend(self._score_batch(query, passages[start : start + self.batch_size])[0])
        return out

    def count_tokens(self, query: str, passages: Sequence[str]) -> int:
        """Model input tokens the pairs occupy after truncation (what the cost model charges)."""
        if not passages:
            return 0
        with self._tokenizer_lock:
            enc = self._tokenizer(
                [query] * len(passages), list(passages), truncation="only_second", max_length=self.max_length
            )
        return sum(len(ids) for ids in enc["input_ids"])

    def score_candidates(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[float], StageCost]:
        """Logits for ``candidates`` (input order) and the cost of computing them."""
        started = time.perf_counter()
        passages = [self._passage(c) for c in candidates]
        scores: list[float] = []
        tokens = 0
        for start in range(0, len(passages), self.batch_size):
            part, used = self._score_batch(query.text, passages[start : start + self.batch_size])
            scores.extend(part)
            tokens += used
        return scores, StageCost(
            "rerank", (time.perf_counter() - started) * 1000, docs=len(candidates), tokens_in=tokens
        )

    def rerank_until(self, query: Query, candidates: Sequence[Candidate], deadline: Deadline) -> PartialRanking:
        """Score batch by batch (``batch_size`` pairs) while ``deadline`` has not passed (HonoursDeadline)."""
        started = time.perf_counter()
        scores: list[float] = []
        tokens = done = 0
        while done < len(candidates) and not deadline.expired():
            batch = candidates[done : done + self.batch_size]
            part, used = self._score_batch(query.text, [self._passage(c) for c in batch])
            scores.extend(part)
            tokens += used
            done += len(batch)
        ranking = RankedList.from_scores(query.query_id, candidates[:done], scores)
        cost = StageCost("rerank", (time.perf_counter() - started) * 1000, docs=done, tokens_in=tokens)
        return PartialRanking(ranking, (cost,) if done else (), tuple(candidates[done:]))

    def rerank_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, StageCost]:
        scores, cost = self.score_candidates(query, candidates)
        return RankedList.from_scores(query.query_id, candidates, scores), cost

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return self.rerank_with_cost(query, candidates)[0]

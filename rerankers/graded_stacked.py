"""The ``graded-stacked`` reranker and judge: grades L1–L4 with P(grade) from boosted trees over many signals.

Per (query, item) pair, computed at serving time from the query and the candidates' texts
(:mod:`~twostage_search.rerankers.stacked_features`): the MS MARCO cross-encoder's logit on the title and on
title + description, the bge-small cosine of query and title + description, BM25 among the query's candidates,
each also relative to the query's other candidates, lexical overlap, phrase, number and unit matches, lengths,
query-level features (number of candidates, spread of their logits, share holding every query word), and the
``graded`` ordinal model's E[grade] (``graded``); a model computes only the signals its features read. A
:class:`~twostage_search.rerankers.stacked.StackedModel` turns them into P(L1..L4); like ``graded`` and the
``lore`` judge, :meth:`GradedStackedReranker.judge` gives each item a grade, E[grade] and P(grade), and
documents are ranked by E[grade].

The bundled model, ``bundled:graded-stacked-crowdflower``, was fitted on the CrowdFlower search-relevance train
queries (in-domain there; zero-shot everywhere else). Features relative to the query's candidates assume a list
like the training one (all judged products of a query); on a first stage's top k they are computed among those k.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.cost import StageCost
from twostage_search.engine.dense import DEFAULT_DENSE
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import DEFAULT_ONNX_CROSS_ENCODER, resolve_model
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.graded import LOGITS, MODEL_FILE, graded_judgements, load_graded_model, passage
from twostage_search.rerankers.llm.lore_labels import Judgement
from twostage_search.rerankers.ordinal import OrdinalModel
from twostage_search.rerankers.stacked import StackedModel
from twostage_search.rerankers.stacked_features import SIGNALS, STACKED_FEATURES, signals_read, stacked_features

DEFAULT_STACKED_MODEL = "bundled:graded-stacked-crowdflower"
GRADED_FEATURE = "graded"  # the ``graded`` ordinal model's E[grade]
KNOWN = (*STACKED_FEATURES, GRADED_FEATURE)
DENSE_MAX_LENGTH = 64  # tokens of title + description the bge-small cosine reads


def load_stacked_model(spec: str) -> StackedModel:
    """A stacked model: ``bundled:NAME``, a directory holding ``model.json``, or the JSON file itself."""
    path = Path(resolve_model(spec))
    return StackedModel.load(path / MODEL_FILE if path.is_dir() else path)


def with_graded(rows: list[dict[str, float]], graded: OrdinalModel | None) -> list[dict[str, float]]:
    """``rows`` with the ``graded`` ordinal model's E[grade] added (unchanged when ``graded`` is None)."""
    if graded is None or not rows:
        return rows
    expected = graded.expected(graded.matrix(rows))
    return [r | {GRADED_FEATURE: float(e)} for r, e in zip(rows, expected, strict=True)]


class SignalScorer:
    """The model-scored signals of the stacked features: ``ce`` (the cross-encoder's logit of query and title,
    64 tokens), ``ce_text`` (its logit of query and title + description, 128 tokens) and ``bge`` (the cosine of
    the query's and the title + description's bge-small vectors, :data:`DENSE_MAX_LENGTH` tokens). ``bm25`` needs
    no model (computed with the features).

    Args:
        names: the signals to score (``ce``, ``ce_text``, ``bge``).
        cross_encoder: the ONNX cross-encoder (default: the bundled ms-marco-MiniLM-L-12 INT8).
        dense: the dense encoder (default: the ``dense-flat`` one, bge-small).
        threads: ONNX Runtime intra-op threads (None: its default).
    """

    def __init__(
        self,
        names: Sequence[str] = SIGNALS,
        *,
        cross_encoder: str = DEFAULT_ONNX_CROSS_ENCODER,
        dense: str = DEFAULT_DENSE,
        threads: int | None = None,
    ) -> None:
        unknown = set(names) - set(SIGNALS)
        if unknown:
            raise InputError(f"unknown signals {sorted(unknown)} (known: {', '.join(SIGNALS)})")
        self.names = tuple(n for n in names if n != "bm25")
        self._ce: dict[str, Any] = {}
        self._dense: Any = None
        if set(self.names) & set(LOGITS):
            from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker

            self._ce = {
                name: OnnxCrossEncoderReranker(cross_encoder, max_length=LOGITS[name][1], threads=threads)
                for name in LOGITS
                if name in self.names
            }
        if "bge" in self.names:
            from twostage_search.engine.dense import DenseEncoder

            self._dense = DenseEncoder(dense, max_length=DENSE_MAX_LENGTH, threads=threads)

    def logits(
        self, query: Query, candidates: Sequence[Candidate], names: Sequence[str] | None = None
    ) -> tuple[dict[str, list[float]], StageCost]:
        """Each signal (or those of ``names``) for ``candidates``, in input order, and their summed cost."""
        started = time.perf_counter()
        out: dict[str, list[float]] = {}
        tokens = 0
        wanted = self.names if names is None else [n for n in self.names if n in names]
        for name, ce in self._ce.items():
            if name in wanted:
                out[name], cost = ce.score_candidates(query, [passage(c, name) for c in candidates])
                tokens += cost.tokens_in
        if "bge" in wanted:
            texts = [f"{c.title} {c.text}".strip() for c in candidates]
            q = self._dense.encode_queries([query.text])[0]
            out["bge"] = [float(v) for v in self._dense.encode_docs(texts) @ q] if texts else []
            tokens += self._dense.count_tokens(texts)
        wall = (time.perf_counter() - started) * 1000
        return out, StageCost("rerank", wall, docs=len(candidates), tokens_in=tokens)


class GradedStackedReranker:
    """Grades items L1–L4 with P(grade) from a stacked model over cross-encoder, dense, BM25 and lexical features.

    Args:
        model: the fitted model: ``bundled:NAME`` (default ``bundled:graded-stacked-crowdflower``), a directory
            with ``model.json``, or the file.
        graded_model: the ``graded`` ordinal model whose E[grade] is the ``graded`` feature (default: the one
            the model records in its ``meta``, else ``bundled:graded-crowdflower``).
        cross_encoder: the ONNX cross-encoder of the ``ce`` feature (must be the one the model was fitted with).
        dense: the dense encoder of the ``bge`` feature (default: the ``dense-flat`` encoder, bge-small).
        threads: ONNX Runtime intra-op threads (None: its default).
    """

    name = "graded-stacked"

    def __init__(
        self,
        model: str | StackedModel = DEFAULT_STACKED_MODEL,
        *,
        graded_model: str | None = None,
        cross_encoder: str = DEFAULT_ONNX_CROSS_ENCODER,
        dense: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.model = model if isinstance(model, StackedModel) else load_stacked_model(model)
        unknown = set(self.model.features) - set(KNOWN)
        if unknown:
            raise InputError(f"stacked model uses unknown features {sorted(unknown)} (known: {', '.join(KNOWN)})")
        self.grades = self.model.grades
        # what the judging store records the judgements under (``PairJudge.prompt_id``): the model's trees
        self.prompt_id = "graded-stacked-" + hashlib.sha256(self.model.booster.encode("utf-8")).hexdigest()[:12]
        meta = self.model.meta or {}
        self._graded: OrdinalModel | None = None
        if GRADED_FEATURE in self.model.features:
            self._graded = load_graded_model(graded_model or meta.get("graded_model", "bundled:graded-crowdflower"))
        used = set(signals_read(self.model.features)) | ({"ce"} if self._graded is not None else set())
        self.scorer = SignalScorer(
            tuple(n for n in SIGNALS if n in used),
            cross_encoder=cross_encoder,
            dense=dense or meta.get("dense", DEFAULT_DENSE),
            threads=threads,
        )

    def signals(self, query: Query, candidates: Sequence[Candidate]) -> tuple[dict[str, list[float]], StageCost]:
        """The model's signals (``ce``, ``ce_text`` logits, ``bge`` cosines) of ``candidates`` (input order), and
        their cost."""
        return self.scorer.logits(query, candidates)

    def features(
        self, query: Query, candidates: Sequence[Candidate], signals: Mapping[str, Sequence[float]]
    ) -> list[dict[str, float]]:
        """Every pair's feature row from precomputed ``signals`` (see :meth:`signals`); a signal the model needs
        that ``signals`` lacks is scored here."""
        missing = [n for n in self.scorer.names if n not in signals]
        if missing and candidates:
            signals = {**signals, **self.scorer.logits(query, candidates, missing)[0]}
        return with_graded(stacked_features(query.text, candidates, signals), self._graded)

    def predict(
        self, query: Query, candidates: Sequence[Candidate], signals: Mapping[str, Sequence[float]]
    ) -> np.ndarray:
        """P(grade) per candidate, an (n, K) array, from precomputed signals."""
        rows = self.features(query, candidates, signals)
        return self.model.probabilities(self.model.matrix(rows))

    def judgements(
        self, query: Query, candidates: Sequence[Candidate], signals: Mapping[str, Sequence[float]]
    ) -> list[Judgement]:
        """Judgements from precomputed signals (what :meth:`judge` does after scoring)."""
        if not candidates:
            return []
        x = self.model.matrix(self.features(query, candidates, signals))
        return graded_judgements(self.model, self.grades, x, candidates, "graded-stacked")

    def judge(self, query: Query, candidates: Sequence[Candidate]) -> list[Judgement]:
        """One judgement per candidate, in input order: grade (``label``, L1–L4), E[grade], P(grade)."""
        return self.judge_with_cost(query, candidates)[0]

    def judge_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[Judgement], StageCost]:
        started = time.perf_counter()
        signals, cost = self.signals(query, candidates)
        out = self.judgements(query, candidates, signals)
        wall = (time.perf_counter() - started) * 1000
        return out, StageCost("rerank", wall, docs=len(candidates), tokens_in=cost.tokens_in)

    def rerank_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, StageCost]:
        judgements, cost = self.judge_with_cost(query, candidates)
        return RankedList.from_scores(query.query_id, candidates, [j.expected for j in judgements]), cost

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return self.rerank_with_cost(query, candidates)[0]

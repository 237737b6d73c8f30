"""A graded relevance model: the zero-shot MS MARCO cross-encoder's logit stacked with cheap lexical features
in a small ordinal (cumulative-logit) model that gives P(grade) for the grades 1–4 (L1–L4).

Features of a (query, item) pair, computed among the query's candidates (:func:`pair_features`):

- ``ce``: the bundled INT8 ms-marco-MiniLM-L-12 logit of (query, item title), the title alone in 64 tokens;
  ``ce_text``: the same cross-encoder on the title and description, 128 tokens (about twice the cost);
- for each of them, ``_gap`` (the logit minus the best among the query's candidates), ``_rank`` (its rank
  among them scaled to [0, 1], 0 = first), ``_mean`` (the query's mean logit) and ``_z`` (the logit's
  z-score among the query's candidates, 0 where they all score alike);
- ``title_overlap`` / ``text_overlap``: the share of the query's distinct words found in the title / in the
  title and description; ``query_terms`` / ``title_terms``: log(1 + number of distinct words);
  ``title_all``: 1 if every query word is in the title; ``phrase``: 1 if the query's words appear in the
  title in order, side by side.

A fitted model (:class:`~twostage_search.rerankers.ordinal.OrdinalModel`) names the features it uses. The
bundled one, ``bundled:graded-crowdflower``, was fitted on the CrowdFlower search-relevance train queries
(in-domain there; zero-shot everywhere else). Like the ``lore`` judge, :meth:`GradedReranker.judge` gives
each item a grade L1–L4 and P(L1..L4); documents are ranked by the expected grade.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.cost import StageCost
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import DEFAULT_ONNX_CROSS_ENCODER, resolve_model
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.llm.lore_labels import Judgement
from twostage_search.rerankers.ordinal import OrdinalModel

log = logging.getLogger(__name__)

DEFAULT_GRADED_MODEL = "bundled:graded-crowdflower"
MODEL_FILE = "model.json"
# The cross-encoder logits a model may use: what each reads of an item and its token budget.
LOGITS = {"ce": ("title", 64), "ce_text": ("title and description", 128)}
LEXICAL = ("title_overlap", "text_overlap", "query_terms", "title_terms")
MATCH = ("title_all", "phrase")
RELATIVE = ("_gap", "_rank", "_mean", "_z")
FEATURES = tuple(f"{k}{s}" for k in LOGITS for s in ("", *RELATIVE)) + LEXICAL + MATCH

_WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    """Distinct lower-cased word tokens (``\\w+``)."""
    return set(_WORD.findall(text.lower()))


def _contains(tokens: Sequence[str], phrase: Sequence[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(list(tokens[i : i + n]) == list(phrase) for i in range(len(tokens) - n + 1))


def passage(c: Candidate, logit: str) -> Candidate:
    """The candidate as the ``logit`` cross-encoder reads it: the title alone (else the text) for ``ce``."""
    if logit == "ce":
        return Candidate(c.doc_id, c.score, c.title.strip() or c.text)
    return c


def passage_text(c: Candidate, logit: str) -> str:
    """The text the ``logit`` cross-encoder reads for ``c``: the title alone (else the text) for ``ce``; the
    title and the text, as the cross-encoder joins them, for ``ce_text``."""
    return passage(c, logit).text if logit == "ce" else c.full_text


def pair_features(
    query: str, candidates: Sequence[Candidate], logits: Mapping[str, Sequence[float]]
) -> list[dict[str, float]]:
    """The features of every (query, candidate) pair, in input order.

    ``logits`` maps a logit name (``ce``, ``ce_text``) to one cross-encoder logit per candidate; each gives
    the logit, its gap to the query's best, its rank scaled to [0, 1] (0 = first), the query's mean and
    the logit's z-score among the candidates (population standard deviation; 0 if it is 0).
    """
    for name, values in logits.items():
        if len(values) != len(candidates):
            raise InputError(f"{len(values)} {name} logits for {len(candidates)} candidates")
    if not candidates:
        return []
    rows: list[dict[str, float]] = [{} for _ in candidates]
    span = max(len(candidates) - 1, 1)
    for name, values in logits.items():
        best, mean = max(values), sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        order = sorted(range(len(values)), key=lambda i: (-values[i], candidates[i].doc_id))
        for r, i in enumerate(order):
            rows[i] |= {
                name: float(values[i]),
                f"{name}_gap": float(values[i] - best),
                f"{name}_rank": r / span,
                f"{name}_mean": float(mean),
                f"{name}_z": float((values[i] - mean) / sd) if sd > 0 else 0.0,
            }
    q_tokens = _WORD.findall(query.lower())
    q = set(q_tokens)
    nq = max(len(q), 1)
    for row, c in zip(rows, candidates, strict=True):
        title_tokens = _WORD.findall(c.title.lower())
        title = set(title_tokens)
        row |= {
            "title_overlap": len(q & title) / nq,
            "text_overlap": len(q & (title | words(c.text))) / nq,
            "query_terms": math.log1p(len(q)),
            "title_terms": math.log1p(len(title)),
            "title_all": float(bool(q) and q <= title),
            "phrase": float(_contains(title_tokens, q_tokens)),
        }
    return rows


def load_graded_model(spec: str) -> OrdinalModel:
    """A graded model: ``bundled:NAME``, a directory holding ``model.json``, or the JSON file itself."""
    path = Path(resolve_model(spec))
    return OrdinalModel.load(path / MODEL_FILE if path.is_dir() else path)


class GradedReranker:
    """Grades items L1–L4 with P(grade) from an ordinal model over the cross-encoder logit and lexical features.

    Args:
        model: the fitted ordinal model: ``bundled:NAME`` (default ``bundled:graded-crowdflower``), a directory
            with ``model.json``, or the file.
        cross_encoder: the ONNX cross-encoder whose logit is the ``ce`` feature (must be the one the model
            was fitted with; default: the bundled ms-marco-MiniLM-L-12 INT8).
        threads: ONNX Runtime intra-op threads (None: its default).
    """

    name = "graded"

    def __init__(
        self,
        model: str | OrdinalModel = DEFAULT_GRADED_MODEL,
        *,
        cross_encoder: str = DEFAULT_ONNX_CROSS_ENCODER,
        threads: int | None = None,
    ) -> None:
        from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker

        self.model = model if isinstance(model, OrdinalModel) else load_graded_model(model)
        unknown = set(self.model.features) - set(FEATURES)
        if unknown:
            raise InputError(f"graded model uses unknown features {sorted(unknown)} (known: {', '.join(FEATURES)})")
        self.grades = self.model.grades
        used = {f.removesuffix(s) for f in self.model.features for s in RELATIVE if f.endswith(s)}
        used |= {f for f in self.model.features if f in LOGITS}
        self._ce = {
            name: OnnxCrossEncoderReranker(cross_encoder, max_length=LOGITS[name][1], threads=threads)
            for name in LOGITS
            if name in used
        }

    @property
    def logit_names(self) -> tuple[str, ...]:
        """The cross-encoder logits this model computes (``ce``, ``ce_text``)."""
        return tuple(self._ce)

    def logits(
        self, query: Query, candidates: Sequence[Candidate], names: Sequence[str] | None = None
    ) -> tuple[dict[str, list[float]], StageCost]:
        """The cross-encoder logits the model uses (or those ``names``), input order, and their summed cost."""
        out: dict[str, list[float]] = {}
        ms, tokens = 0.0, 0
        for name, ce in self._ce.items():
            if names is not None and name not in names:
                continue
            out[name], cost = ce.score_candidates(query, [passage(c, name) for c in candidates])
            ms, tokens = ms + cost.wall_ms, tokens + cost.tokens_in
        return out, StageCost("rerank", ms, docs=len(candidates), tokens_in=tokens)

    def predict(
        self, query: Query, candidates: Sequence[Candidate], logits: Mapping[str, Sequence[float]]
    ) -> np.ndarray:
        """P(grade) per candidate, an (n, K) array, from precomputed logits (see :meth:`logits`)."""
        rows = pair_features(query.text, candidates, logits)
        return self.model.probabilities(self.model.matrix(rows)) if rows else np.zeros((0, len(self.grades)))

    def judge(self, query: Query, candidates: Sequence[Candidate]) -> list[Judgement]:
        """One judgement per candidate, in input order: grade (``label``, L1–L4), E[grade], P(grade)."""
        return self.judge_with_cost(query, candidates)[0]

    def judge_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[Judgement], StageCost]:
        started = time.perf_counter()
        logits, ce_cost = self.logits(query, candidates)
        out = self.judgements(query, candidates, logits)
        cost = StageCost(
            "rerank", (time.perf_counter() - started) * 1000, docs=len(candidates), tokens_in=ce_cost.tokens_in
        )
        return out, cost

    def judgements(
        self, query: Query, candidates: Sequence[Candidate], logits: Mapping[str, Sequence[float]]
    ) -> list[Judgement]:
        """Judgements from precomputed ``ce`` logits (what :meth:`judge` does after scoring)."""
        if not candidates:
            return []
        rows = pair_features(query.text, candidates, logits)
        return graded_judgements(self.model, self.grades, self.model.matrix(rows), candidates, "graded")

    def rerank_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, StageCost]:
        judgements, cost = self.judge_with_cost(query, candidates)
        return RankedList.from_scores(query.query_id, candidates, [j.expected for j in judgements]), cost

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return self.rerank_with_cost(query, candidates)[0]


def graded_judgements(
    model: Any, grades: Sequence[int], x: np.ndarray, candidates: Sequence[Candidate], source: str
) -> list[Judgement]:
    """One judgement per candidate from a graded model's ``probabilities`` and ``grade`` over the candidates'
    feature rows ``x``: the grade, E[grade] over ``grades`` and P(grade)."""
    probs = model.probabilities(x)
    expected = probs @ np.array(grades, dtype=np.float64)
    return [
        Judgement(c.doc_id, g, float(e), probs4(p), source=source)
        for c, g, e, p in zip(candidates, model.grade(x), expected, probs, strict=True)
    ]


def probs4(p: Any) -> tuple[float, float, float, float] | None:
    """P(L1..L4) as the lore judge's 4-tuple (None for a model on another number of grades)."""
    values = [float(v) for v in p]
    return (values[0], values[1], values[2], values[3]) if len(values) == 4 else None

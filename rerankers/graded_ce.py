"""The ``graded-ce`` reranker and judge: the MS MARCO cross-encoder fine-tuned on graded pairs, with P(grade).

The fine-tuned model is the bundled INT8 ms-marco-MiniLM-L-12 cross-encoder, dequantised to fp32 torch
(:mod:`~twostage_search.rerankers.onnx_to_torch`), whose top encoder layers, pooler and classifier were trained
on human grades (``benchmarks/studies/graded_finetune.py``). Only what differs from that base ships: the
trained tensors in ``delta.safetensors`` (fp16) and, in ``model.json``, an ordinal model
(:class:`~twostage_search.rerankers.ordinal.OrdinalModel`) over the fine-tuned ``logit`` (and, where it reads
them, the logit relative to the query's other candidates and the lexical features of
:func:`~twostage_search.rerankers.graded.pair_features`) that gives P(L1..L4), E[grade] and a hard grade
(E[grade] cut by thresholds chosen on held-out queries). An ordinal model may also read the ``graded-stacked``
model's features and its E[grade] (``stacked``): that model then runs beside the fine-tuned one, and the delta
may be another model's (``meta.delta_model``). The full
model is rebuilt at load time: the base graph is read into torch and the delta replaces its trained tensors.

The model reads the query and the item title (its text when the title is empty), 64 tokens, like the
``graded`` model's ``ce`` logit; a model whose ``meta.passage`` is ``ce_text`` reads the title and the
description, as the cross-encoder joins them (its ``meta.max_length``: 128). The bundled model,
``bundled:graded-ce-crowdflower``, was trained on the CrowdFlower search-relevance train queries (in-domain
there; zero-shot everywhere else). Like ``graded`` and the ``lore`` judge, :meth:`GradedCEReranker.judge` gives
each item a grade, E[grade] and P(grade); documents are ranked by E[grade], ties by doc id.
``bundled:graded-ce-stacked-crowdflower`` adds the ``graded-stacked`` signals to the fine-tuned logit (an ordinal
model fitted on the CrowdFlower dev queries; about the cost of ``graded-stacked`` plus one fine-tuned pass).
Inference runs in fp32 under ``torch.inference_mode``; tokenising and the forward pass run under one lock per
reranker, so one object may serve many threads. ``twostage export-onnx MODEL OUT --graded-ce``
(:mod:`~twostage_search.rerankers.graded_ce_export`) writes a model as one INT8 ONNX graph, which this
reranker runs on ONNX Runtime instead: several times faster, its logits within a fraction of a grade's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.cost import StageCost
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import DEFAULT_ONNX_CROSS_ENCODER, resolve_model
from twostage_search.engine.optional import require, torch_with_threads
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.graded import (
    LEXICAL,
    LOGITS,
    MATCH,
    MODEL_FILE,
    RELATIVE,
    graded_judgements,
    pair_features,
    passage_text,
)
from twostage_search.rerankers.graded_stacked import DEFAULT_STACKED_MODEL, KNOWN
from twostage_search.rerankers.llm.lore_labels import Judgement
from twostage_search.rerankers.ordinal import OrdinalModel

log = logging.getLogger(__name__)

DEFAULT_GRADED_CE = "bundled:graded-ce-crowdflower"
DELTA_FILE = "delta.safetensors"
ONNX_FILE = "model.onnx"  # an exported model (``twostage export-onnx --graded-ce``): the whole graph, no delta
FEATURE = "logit"  # the fine-tuned classifier logit
# what an ordinal model may read: the logit, the logit relative to the query's other candidates, lexical features
FEATURES = (FEATURE, *(f"{FEATURE}{s}" for s in RELATIVE), *LEXICAL, *MATCH)
STACKED = "stacked"  # the ``graded-stacked`` model's E[grade]; a model reading it (or its features) runs that model too
STACKED_FEATURES = (STACKED, *(f for f in KNOWN if f not in FEATURES))
EXTRA = "export"  # torch, transformers and onnx (to read the base graph)


def trained_names(names: Sequence[str], frozen: int) -> list[str]:
    """The parameter names above the ``frozen`` lower encoder layers: upper layers, pooler, classifier."""
    out = []
    for name in names:
        if name.startswith("bert.encoder.layer."):
            if int(name.split(".")[3]) >= frozen:
                out.append(name)
        elif name.startswith(("bert.pooler.", "classifier.")):
            out.append(name)
    return out


def delta_tensors(model: Any, frozen: int, dtype: str = "float16") -> dict[str, Any]:
    """The tensors a delta file holds for ``model`` trained above ``frozen`` layers, cast to ``dtype``."""
    torch = require("torch", EXTRA)
    state = model.state_dict()
    cast = getattr(torch, dtype)
    return {k: state[k].detach().to(cast).contiguous() for k in trained_names(list(state), frozen)}


def save_delta(model: Any, frozen: int, path: str | Path, dtype: str = "float16") -> None:
    """Write the delta of ``model`` (see :func:`delta_tensors`) as safetensors, atomically."""
    st = require("safetensors.torch", EXTRA)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    st.save_file(delta_tensors(model, frozen, dtype), str(tmp))
    tmp.replace(path)


def apply_delta(model: Any, path: str | Path) -> Any:
    """Replace ``model``'s tensors by those of the delta file (cast to the model's dtype); returns the model.

    Raises :class:`InputError` when the file names a tensor the model lacks or one of another shape.
    """
    st = require("safetensors.torch", EXTRA)
    delta = st.load_file(str(path))
    state = model.state_dict()
    unknown = sorted(k for k in delta if k not in state)
    wrong = sorted(k for k in delta if k in state and tuple(delta[k].shape) != tuple(state[k].shape))
    if unknown or wrong or not delta:
        raise InputError(f"{path}: delta does not fit the base model (unknown {unknown[:3]}, shape {wrong[:3]})")
    ref = next(iter(state.values()))
    model.load_state_dict({k: v.to(ref.dtype) for k, v in delta.items()}, strict=False)
    return model.eval()


def load_finetuned(base: str, delta: str | Path) -> tuple[Any, Any]:
    """The fine-tuned torch model (fp32, eval) rebuilt from an ONNX base (``bundled:NAME`` or a folder with
    ``model.onnx`` and ``tokenizer.json``) and a delta file, and the base's tokenizer."""
    from twostage_search.rerankers.onnx_cross_encoder import onnx_model_files
    from twostage_search.rerankers.onnx_to_torch import tokenizer_from_file, torch_from_onnx

    model_path, tokenizer_path = onnx_model_files(base)
    return apply_delta(torch_from_onnx(model_path), delta), tokenizer_from_file(tokenizer_path)


def load_graded_ce_model(spec: str) -> tuple[OrdinalModel, Path]:
    """The ordinal model of a ``graded-ce`` model (``bundled:NAME`` or a folder) and its weights: the folder's
    exported ``model.onnx``, else its delta file, else that of the model its ``meta`` names as ``delta_model``."""
    folder = Path(resolve_model(spec))
    if not (folder / MODEL_FILE).is_file():
        raise InputError(f"{spec}: a graded-ce model is a folder with {MODEL_FILE} and {DELTA_FILE}")
    model = OrdinalModel.load(folder / MODEL_FILE)
    unknown = sorted(set(model.features) - set(FEATURES) - set(STACKED_FEATURES))
    if unknown or FEATURE not in model.features:
        raise InputError(f"{spec}: a graded-ce ordinal model reads {FEATURE!r} and known features, not {unknown}")
    if (folder / ONNX_FILE).is_file():
        return model, folder / ONNX_FILE
    delta = folder / DELTA_FILE
    if not delta.is_file() and (model.meta or {}).get("delta_model"):
        delta = Path(resolve_model(str((model.meta or {})["delta_model"]))) / DELTA_FILE
    if not delta.is_file():
        raise InputError(f"{spec}: a graded-ce model is a folder with {MODEL_FILE} and {DELTA_FILE}")
    return model, delta


class GradedCEReranker:
    """Grades items L1–L4 with P(grade) from the cross-encoder fine-tuned on human grades.

    Args:
        model: the fine-tuned model: ``bundled:NAME`` (default ``bundled:graded-ce-crowdflower``) or a folder
            with ``model.json`` (the ordinal model; its ``meta`` names the base) and ``delta.safetensors``, or
            with ``model.json``, ``model.onnx`` and ``tokenizer.json`` as ``twostage export-onnx --graded-ce``
            writes (run on ONNX Runtime, one pair per run).
        base: the ONNX cross-encoder the delta applies to (default: the one the model records, else the
            bundled ms-marco-MiniLM-L-12 INT8).
        batch_size: pairs per forward pass (torch; an exported graph scores one pair per run).
        threads: torch intra-op threads (process-wide setting; ``None`` leaves it alone), or the ONNX Runtime
            session's.
    """

    name = "graded-ce"

    def __init__(
        self,
        model: str = DEFAULT_GRADED_CE,
        *,
        base: str | None = None,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be ≥ 1, got {batch_size}")
        self.model, weights = load_graded_ce_model(model)
        meta = self.model.meta or {}
        self.grades = self.model.grades
        self.max_length = int(meta.get("max_length", 64))
        self.passage = str(meta.get("passage", "ce"))  # what the model reads: "ce" title, "ce_text" + description
        if self.passage not in LOGITS:
            raise InputError(f"{model}: meta.passage must be one of {', '.join(LOGITS)}, got {self.passage!r}")
        self.batch_size = batch_size
        self._onnx: Any = None
        if weights.name == ONNX_FILE:
            from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker

            self._onnx = OnnxCrossEncoderReranker(str(weights.parent), max_length=self.max_length, threads=threads)
        else:
            self._torch = torch_with_threads(threads, EXTRA)
            self._net, self._tokenizer = load_finetuned(base or meta.get("base", DEFAULT_ONNX_CROSS_ENCODER), weights)
        self._lock = threading.Lock()
        self._stacked: Any = None
        if set(self.model.features) & set(STACKED_FEATURES):
            from twostage_search.rerankers.graded_stacked import GradedStackedReranker

            self._stacked = GradedStackedReranker(meta.get("stacked_model", DEFAULT_STACKED_MODEL), threads=threads)

    def score(self, query: str, passages: Sequence[str]) -> tuple[list[float], int]:
        """The fine-tuned logits of (query, passage) pairs, in input order, and the input tokens they took."""
        if self._onnx is not None:
            values: tuple[list[float], int] = self._onnx.score_with_tokens(query, passages)
            return values
        out: list[float] = []
        tokens = 0
        for start in range(0, len(passages), self.batch_size):
            part = list(passages[start : start + self.batch_size])
            with self._lock, self._torch.inference_mode():
                enc = self._tokenizer(
                    [query] * len(part),
                    part,
                    truncation="longest_first",
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                logits = self._net(**enc).logits[:, 0].float()
            tokens += int(enc["attention_mask"].sum())
            out.extend(float(v) for v in logits)
        return out, tokens

    def logits(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[float], StageCost]:
        """The fine-tuned logit of each candidate (its title, else its text; or its title and text where the model
        reads both: ``meta.passage``), input order, and its cost."""
        started = time.perf_counter()
        values, tokens = self.score(query.text, [passage_text(c, self.passage) for c in candidates])
        wall = (time.perf_counter() - started) * 1000
        return values, StageCost("rerank", wall, docs=len(candidates), tokens_in=tokens)

    def features(
        self,
        query: Query,
        candidates: Sequence[Candidate],
        logits: Sequence[float],
        signals: Mapping[str, Sequence[float]] | None = None,
    ) -> np.ndarray:
        """The ordinal model's feature matrix of the candidates (input order) from their precomputed logits (and,
        for a model reading ``graded-stacked``, its signals; scored here when not given)."""
        if not candidates:
            return np.zeros((0, len(self.model.features)))
        rows = pair_features(query.text, candidates, {FEATURE: logits})
        if self._stacked is not None:
            stacked = self._stacked.features(query, candidates, signals or {})
            expected = self._stacked.model.expected(self._stacked.model.matrix(stacked))
            rows = [s | r | {STACKED: float(e)} for s, r, e in zip(stacked, rows, expected, strict=True)]
        return self.model.matrix(rows)

    def judgements(
        self,
        query: Query,
        candidates: Sequence[Candidate],
        logits: Sequence[float],
        signals: Mapping[str, Sequence[float]] | None = None,
    ) -> list[Judgement]:
        """Judgements from precomputed logits and signals (what :meth:`judge` does after scoring)."""
        if not candidates:
            return []
        x = self.features(query, candidates, logits, signals)
        return graded_judgements(self.model, self.grades, x, candidates, "graded-ce")

    def judge(self, query: Query, candidates: Sequence[Candidate]) -> list[Judgement]:
        """One judgement per candidate, in input order: grade (``label``, L1–L4), E[grade], P(grade)."""
        return self.judge_with_cost(query, candidates)[0]

    def judge_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[Judgement], StageCost]:
        started = time.perf_counter()
        logits, cost = self.logits(query, candidates)
        tokens = cost.tokens_in
        signals: dict[str, list[float]] = {}
        if self._stacked is not None and candidates:
            signals, more = self._stacked.signals(query, candidates)
            tokens += more.tokens_in
        out = self.judgements(query, candidates, logits, signals)
        wall = (time.perf_counter() - started) * 1000
        return out, StageCost("rerank", wall, docs=len(candidates), tokens_in=tokens)

    def rerank_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, StageCost]:
        judgements, cost = self.judge_with_cost(query, candidates)
        return RankedList.from_scores(query.query_id, candidates, [j.expected for j in judgements]), cost

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return self.rerank_with_cost(query, candidates)[0]


def meta_record(base: str, frozen: int, max_length: int, **extra: Any) -> Mapping[str, Any]:
    """The ``meta`` a graded-ce ordinal model records: its base, trained layers and token budget."""
    return {"base": base, "frozen": frozen, "max_length": max_length, "delta": DELTA_FILE, **extra}

"""Train a bi-encoder "student" on a teacher's scores (MarginMSE), for the ``sentence-transformers`` dense kind.

The last link of the teacher → assistant → student chain (LLMDistill4Ads): a cross-encoder (the assistant)
scores each training query's first-stage candidates; pairs of candidates of one query become triples
``(query, a, b, margin)`` with ``margin = scale · (score(a) − score(b))``, and the bi-encoder learns to
reproduce the margin as the difference of its two cosine similarities (MarginMSE: Hofstätter et al.,
"Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation", 2020). Training runs
through sentence-transformers' ``SentenceTransformerTrainer`` with ``losses.MarginMSELoss``; the model is
written atomically as a sentence-transformers directory that ``twostage index --backend dense-flat
--encoder sentence-transformers --model DIR`` encodes with.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.atomic import atomic_directory
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.optional import require, sentence_transformers_part

log = logging.getLogger(__name__)

TRAINING_FILE = "training.json"


@dataclass(frozen=True, slots=True)
class MarginTriple:
    """A query, two of its candidates and the teacher's score margin ``score(a) − score(b)`` (scaled)."""

    query: str
    a: str
    b: str
    margin: float


@dataclass(frozen=True, slots=True)
class StudentConfig:
    """Settings of one student training run (recorded beside the model in ``training.json``)."""

    base_model: str = "bundled:minilm-l6"
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    max_length: int = 64
    seed: int = 13
    device: str = "cpu"
    logging_steps: int = 25


def margin_triples(
    query: str,
    scored: Sequence[tuple[str, float]],
    *,
    pairs: int,
    scale: float = 1.0,
    rng: random.Random,
) -> list[MarginTriple]:
    """Up to ``pairs`` triples of one query from its candidates' ``(text, teacher score)``: distinct candidate
    pairs drawn with ``rng`` (no pair twice, never a candidate with itself), the higher-scored one first."""
    if pairs < 0 or scale <= 0:
        raise InputError("pairs must be ≥ 0 and scale > 0")
    n = len(scored)
    every = [(i, j) for i in range(n) for j in range(i + 1, n) if scored[i][0] != scored[j][0]]
    chosen = rng.sample(every, min(pairs, len(every)))
    out = []
    for i, j in chosen:
        (ta, sa), (tb, sb) = sorted((scored[i], scored[j]), key=lambda c: -c[1])
        out.append(MarginTriple(query, ta, tb, scale * (sa - sb)))
    return out


def margin_mse(model: Any, triples: Sequence[MarginTriple], batch_size: int = 64) -> float:
    """Mean squared error between each triple's margin and the model's ``cos(q, a) − cos(q, b)`` (numpy), the
    quantity MarginMSE minimises (with L2-normalised embeddings)."""
    if not triples:
        raise InputError("no triples")

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(
            model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True),
            dtype=np.float64,
        )

    q = encode([t.query for t in triples])
    a = encode([t.a for t in triples])
    b = encode([t.b for t in triples])
    predicted = (q * a).sum(axis=1) - (q * b).sum(axis=1)
    target = np.array([t.margin for t in triples], dtype=np.float64)
    return float(np.mean((predicted - target) ** 2))


@dataclass(frozen=True, slots=True)
class TrainedStudent:
    """What :func:`train_student` wrote (``path``, its ``training.json`` record) and the trained model in memory."""

    path: Path
    record: dict[str, Any]
    model: Any


def train_student(
    triples: Sequence[MarginTriple],
    out: str | Path,
    config: StudentConfig = StudentConfig(),
    *,
    provenance: Mapping[str, Any] | None = None,
) -> TrainedStudent:
    """Fine-tune ``config.base_model`` (a sentence-transformers bi-encoder) with MarginMSE on ``triples``.

    Embeddings are L2-normalised inside the model (a ``Normalize`` module is appended if the base lacks one),
    so the trained similarity is the cosine a dense index scores with. Written atomically to ``out`` with
    ``training.json`` (config, triple count, logged losses, wall time, ``provenance``).
    """
    if not triples:
        raise InputError("no training triples")
    st = require("sentence_transformers", "rerank")
    datasets = require("datasets", "train")
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    margin_mse = sentence_transformers_part("losses", "rerank").MarginMSELoss
    normalize = sentence_transformers_part("modules", "rerank").Normalize

    rng = random.Random(config.seed)
    shuffled = list(triples)
    rng.shuffle(shuffled)
    dataset = datasets.Dataset.from_dict(
        {
            "query": [t.query for t in shuffled],
            "a": [t.a for t in shuffled],
            "b": [t.b for t in shuffled],
            "label": [float(t.margin) for t in shuffled],
        }
    )
    require("transformers", "train").set_seed(config.seed)
    model = st.SentenceTransformer(resolve_model(config.base_model), device=config.device)
    if not any(isinstance(m, normalize) for m in model):
        model.append(normalize())
    model.max_seq_length = config.max_length
    started = time.perf_counter()
    with atomic_directory(out, overwrite=True, marker=TRAINING_FILE) as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp / "_checkpoints"),
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_ratio=config.warmup_ratio,
            seed=config.seed,
            data_seed=config.seed,
            save_strategy="no",
            report_to="none",
            logging_steps=config.logging_steps,
            use_cpu=config.device == "cpu",
        )
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=margin_mse(model))
        output = trainer.train()
        shutil.rmtree(tmp / "_checkpoints", ignore_errors=True)
        model.save(str(tmp))
        record: dict[str, Any] = {
            "config": asdict(config),
            "loss": "MarginMSE (sentence-transformers losses.MarginMSELoss, cosine of normalised embeddings)",
            "triples": len(triples),
            "train_loss": round(float(output.training_loss), 6),
            "logged_losses": [round(float(h["loss"]), 6) for h in trainer.state.log_history if "loss" in h],
            "train_seconds": round(time.perf_counter() - started, 1),
            **({"triples_source": dict(provenance)} if provenance else {}),
        }
        (tmp / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info("trained student on %d triples in %.0fs → %s", len(triples), time.perf_counter() - started, out)
    return TrainedStudent(Path(out), record, model)

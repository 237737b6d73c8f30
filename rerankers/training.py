"""Train a cross-encoder reranker on labelled (query, passage) pairs.

Used two ways: (1) the default cross-encoder is fine-tuned from all-MiniLM-L6-v2 on BEIR SciFact's
train qrels, with hard negatives mined from the SPLADE first stage (``twostage train-cross-encoder``);
(2) an LLM judge's graded labels can train it as the cheaper "assistant" model (teacher → assistant
distillation). Training runs through sentence-transformers' ``CrossEncoderTrainer``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from twostage_search.engine.atomic import atomic_directory
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.optional import require
from twostage_search.engine.protocols import Retriever
from twostage_search.engine.types import Document, Query

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pair:
    """A labelled training pair; ``label`` is 1/0 for binary relevance or a graded score."""

    query: str
    passage: str
    label: float


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Settings of one training run (recorded beside the model in ``training.json``)."""

    base_model: str = "bundled:minilm-l6"
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    max_length: int = 256
    seed: int = 13
    device: str = "cpu"
    loss: Literal["bce", "pearson"] = "bce"  # "pearson": graded labels (e.g. an LLM judge's L1-L4)


def pearson_loss(logits: Any, labels: Any, eps: float = 1e-8) -> Any:
    """``1 − r``, with r the Pearson correlation of a batch's logits and labels (torch tensors).

    Scale- and shift-free: the model learns to order pairs as the labels do, whatever the label scale
    (L1–L4, 0–3, probabilities). A batch whose labels are all equal carries no signal (r = 0, no gradient).
    """
    x = logits.float().view(-1)
    y = labels.float().view(-1).to(x.device)
    x = x - x.mean()
    y = y - y.mean()
    r = (x * y).sum() / (x.norm() * y.norm() + eps)
    return 1.0 - r


def _pearson_module(model: Any) -> Any:
    """A sentence-transformers ``CrossEncoderTrainer`` loss (``forward(inputs, labels)``) over :func:`pearson_loss`.

    Distils a graded teacher (LORE's L1–L4 judge) into a one-logit cross-encoder, as the LORE report's
    teacher → assistant step does with a correlation objective.
    """
    torch = require("torch", "rerank")
    from sentence_transformers.util import batch_to_device

    class PearsonCorrelationLoss(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, inputs: list[list[str]], labels: Any, prompt: str | None = None, task: str | None = None
        ) -> Any:
            pairs = list(zip(inputs[0], inputs[1], strict=True))
            if hasattr(self.model, "preprocess"):  # sentence-transformers ≥ 6
                features = batch_to_device(self.model.preprocess(pairs, prompt=prompt, task=task), self.model.device)
                logits = self.model(features)["scores"].view(-1)
            else:  # sentence-transformers 5
                tokens = self.model.tokenizer(
                    inputs[0], inputs[1], padding=True, truncation=True, return_tensors="pt"
                ).to(self.model.device)
                logits = self.model(**tokens)[0].view(-1)
            return pearson_loss(logits, labels)

        def get_config_dict(self) -> dict[str, Any]:
            return {}

    return PearsonCorrelationLoss(model)


def mine_pairs(
    retriever: Retriever,
    queries: Sequence[Query],
    qrels: Mapping[str, Mapping[str, int]],
    corpus: Mapping[str, Document],
    *,
    negatives: int = 7,
    depth: int = 30,
    random_negatives: int = 0,
    seed: int = 13,
    exclude: Collection[str] = (),
) -> list[Pair]:
    """Positives from ``qrels``, hard negatives from the first stage, optional random negatives.

    Every judged-relevant document of a query is a positive; ``negatives`` unjudged documents are drawn
    (seeded, so the same inputs give the same pairs) from the retriever's top ``depth`` for that query,
    and ``random_negatives`` from the whole corpus (easy negatives that teach topicality).
    Documents in ``exclude`` (e.g. every document relevant to a test query) appear in no pair, neither as
    a positive nor as a negative; a query left without a positive is skipped.
    """
    rng = random.Random(seed)
    banned = set(exclude)
    all_ids = [d for d in sorted(corpus) if d not in banned]
    pairs: list[Pair] = []
    for q in queries:
        relevant = {d for d, rel in qrels.get(q.query_id, {}).items() if rel > 0}
        positives = sorted(d for d in relevant if d in corpus and d not in banned)
        if not positives:
            continue
        pairs.extend(Pair(q.text, corpus[d].full_text, 1.0) for d in positives)
        skip = relevant | banned
        pool = [h.doc_id for h in retriever.retrieve(q, depth) if h.doc_id not in skip]
        chosen = rng.sample(pool, min(negatives, len(pool)))
        for doc_id in chosen:
            pairs.append(Pair(q.text, corpus[doc_id].full_text, 0.0))
        easy = [d for d in rng.sample(all_ids, min(len(all_ids), random_negatives + len(relevant) + len(chosen)))]
        easy = [d for d in easy if d not in relevant and d not in chosen][:random_negatives]
        pairs.extend(Pair(q.text, corpus[d].full_text, 0.0) for d in easy)
    return pairs


def write_pairs(pairs: Sequence[Pair], path: str | Path) -> None:
    """Save pairs as JSONL (``query``, ``passage``, ``label``)."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")


def read_pairs(path: str | Path) -> list[Pair]:
    """Load pairs written by :func:`write_pairs` (or by an LLM judge); labels may be graded."""
    pairs = []
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append(Pair(str(row["query"]), str(row["passage"]), float(row["label"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise InputError(f"{path}:{lineno}: not a (query, passage, label) pair ({exc})") from None
    return pairs


def train_cross_encoder(
    pairs: Sequence[Pair],
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Fine-tune ``config.base_model`` as a one-logit cross-encoder on ``pairs``.

    ``config.loss``: ``"bce"`` (binary cross-entropy; labels in [0, 1]) or ``"pearson"`` (1 − Pearson
    correlation of each batch's logits with graded labels; see :func:`pearson_loss`).

    The model is written atomically to ``out`` as a standard sentence-transformers directory, with
    ``training.json`` recording the config, the pair counts, the wall time and ``provenance`` (where the
    pairs came from).
    """
    if not pairs:
        raise InputError("no training pairs")
    if config.loss not in ("bce", "pearson"):
        raise InputError(f"unknown loss {config.loss!r} (bce, pearson)")
    st = require("sentence_transformers", "rerank")
    datasets = require("datasets", "train")
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    rng = random.Random(config.seed)
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    dataset = datasets.Dataset.from_dict(
        {
            "query": [p.query for p in shuffled],
            "passage": [p.passage for p in shuffled],
            "label": [float(p.label) for p in shuffled],
        }
    )
    torch = require("torch", "rerank")
    require("transformers", "train").set_seed(config.seed)  # the new classifier head's initial weights too
    model = st.CrossEncoder(
        resolve_model(config.base_model),
        num_labels=1,
        max_length=config.max_length,
        device=config.device,
        model_kwargs={"dtype": torch.float32},  # train in fp32 even if the base weights are stored in fp16
    )
    started = time.perf_counter()
    with atomic_directory(out, overwrite=True, marker="training.json") as tmp:
        args = CrossEncoderTrainingArguments(
            output_dir=str(tmp / "_checkpoints"),
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_ratio=config.warmup_ratio,
            seed=config.seed,
            data_seed=config.seed,
            save_strategy="no",
            report_to="none",
            logging_steps=25,
            use_cpu=config.device == "cpu",
        )
        loss = BinaryCrossEntropyLoss(model) if config.loss == "bce" else _pearson_module(model)
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
        output = trainer.train()
        shutil.rmtree(tmp / "_checkpoints", ignore_errors=True)
        model.save_pretrained(str(tmp))
        positives = sum(1 for p in pairs if p.label > 0)
        record: dict[str, Any] = {
            "config": asdict(config),
            "pairs": len(pairs),
            "positives": positives,
            "negatives": len(pairs) - positives,
            "train_loss": round(float(output.training_loss), 4),
            "train_seconds": round(time.perf_counter() - started, 1),
            **({"pairs_source": dict(provenance)} if provenance else {}),
        }
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("trained cross-encoder on %d pairs in %.0fs → %s", len(pairs), time.perf_counter() - started, out)
    return Path(out)

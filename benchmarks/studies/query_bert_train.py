"""Training of the contextual query student (torch): bge-small's first layers, pooling and a linear head, all
trained end to end towards the teacher's query vectors, and its ONNX export.

The model (:func:`student_module`): ``[CLS] text [SEP]`` (no prefix) → a ``BertModel`` of ``layers`` layers,
initialised from the teacher's first layers (dequantised from its INT8 export, ``rerankers/onnx_to_torch.py``)
→ CLS or masked-mean pooling → ``Linear(hidden, dim)`` → unit vector. The head starts as the ridge regression
of the teacher's vectors on the untrained trunk's pooled outputs of a sample of the training texts, or as the
identity (or there is none), for a trunk whose pooled output already lies in the teacher's space: e.g. every
other layer of the teacher, its last one included, with its own CLS pooling (DistilBERT's initialisation).

The loss is the static table's (``query_static_train.py``): ``1 − cos(student, teacher)`` plus ``listwise``
times the KL divergence between the teacher's and the student's softmax (temperature ``tau``) over the
teacher's top ``top`` and ``random`` random documents of the text's corpus. Every parameter (position
embeddings, layers, head; the word-piece table only with ``word_embeddings``, as its 11.7 M entries make every optimiser
step several times dearer) is trained with AdamW (a linear warm-up, then linear decay), length-bucketed
batches, seeded.
After each epoch the weights are saved and dev is measured (dense and hybrid nDCG@10, :func:`measure`); with
``measure_every`` also every that many optimiser steps within an epoch (a learning curve; no weights saved).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.studies.query_static_train import Corpus, DevSet, listwise_kl, teacher_top
from twostage_search.engine.optional import require

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
HEADS = ("fit", "identity", "none")


@dataclass(frozen=True)
class BertSettings:
    layers: int = 3
    pooling: str = "mean"
    head: str = "fit"
    epochs: int = 3
    lr: float = 1e-4
    head_lr: float = 1e-3
    batch: int = 64
    max_length: int = 64
    listwise: float = 1.0
    tau: float = 0.05
    top: int = 32
    random: int = 32
    warmup: int = 100
    ridge_texts: int = 4096
    word_embeddings: bool = False
    measure_every: int = 0
    seed: int = 0


def student_module(bert: Any, dim: int, pooling: str, *, residual: bool = False, head: str = "fit") -> Any:
    """``forward(input_ids, attention_mask) → (batch, dim)`` unit vectors: ``bert``, pooling, a linear head.

    ``head``: ``fit`` (the default) is a linear head that :func:`train` fits by ridge regression before
    training (zero for a residual model); ``identity`` a linear head that starts as the identity (``dim`` must
    be the hidden size), so the untrained model is ``bert``'s own pooled vector, normalised; ``none`` no head
    at all (the same vector, with nothing to train after the trunk).

    With ``residual``, ``forward(input_ids, attention_mask, static)`` adds the head's output to ``static`` (a
    static query side's unit vectors of the same texts) before normalising; the head starts at zero, so the
    untrained model is the static side exactly and training learns a contextual correction."""
    torch = require("torch", "export")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head != "fit" and (residual or dim != bert.config.hidden_size):
        raise ValueError(f"a {head!r} head needs dim = the hidden size ({bert.config.hidden_size}) and no residual")

    class QueryStudent(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert
            self.dim = dim
            self.head_init = head
            self.head = torch.nn.Identity() if head == "none" else torch.nn.Linear(bert.config.hidden_size, dim)
            self.residual = residual
            if head == "identity":
                torch.nn.init.eye_(self.head.weight)
                torch.nn.init.zeros_(self.head.bias)
            if residual:
                torch.nn.init.zeros_(self.head.weight)
                torch.nn.init.zeros_(self.head.bias)

        def pooled(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            if pooling == "cls":
                return hidden[:, 0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

        def forward(self, input_ids: Any, attention_mask: Any, static: Any = None) -> Any:
            out = self.head(self.pooled(input_ids, attention_mask))
            return torch.nn.functional.normalize(out + static if self.residual else out, dim=-1)

    return QueryStudent()


def padded(rows: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    """``input_ids``, ``attention_mask`` tensors of ``rows``, right-padded with 0 to the longest."""
    torch = require("torch", "export")
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def encode(model: Any, rows: Sequence[Sequence[int]], static: np.ndarray | None = None, batch: int = 128) -> np.ndarray:
    """The model's unit vectors of tokenised texts (and their static vectors, for a residual model),
    length-bucketed (padding does not change a row's vector)."""
    torch = require("torch", "export")
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = np.zeros((len(rows), model.dim), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch):
            part = order[start : start + batch]
            extra = [] if static is None else [torch.from_numpy(static[part])]
            out[part] = model(*padded([rows[i] for i in part]), *extra).numpy()
    return out


def ridge_head(model: Any, rows: Sequence[Sequence[int]], targets: np.ndarray, alpha: float = 10.0) -> None:
    """Set the head to the ridge regression of ``targets`` on the trunk's pooled outputs of ``rows``."""
    torch = require("torch", "export")
    model.eval()
    feats = []
    with torch.no_grad():
        for start in range(0, len(rows), 128):
            feats.append(model.pooled(*padded(rows[start : start + 128])).numpy())
    x = np.concatenate(feats).astype(np.float64)
    mx, my = x.mean(axis=0), targets.mean(axis=0)
    xc = x - mx
    weight = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (targets - my))
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight.T.astype(np.float32)))
        model.head.bias.copy_(torch.from_numpy((my - mx @ weight).astype(np.float32)))


def batches(lengths: Sequence[int], size: int, rnd: np.random.Generator) -> list[np.ndarray]:
    """Length-bucketed batches: shuffle, sort chunks of 50 batches by length, cut, shuffle the batches."""
    order = rnd.permutation(len(lengths))
    out = []
    pool = size * 50
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        out += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rnd.shuffle(out)
    return out


def train(
    model: Any,
    train_ids: Sequence[Sequence[int]],
    targets: np.ndarray,
    corpus_of: Sequence[str | None],
    corpora: Mapping[str, Corpus],
    settings: BertSettings,
    measure: Callable[[Any], dict[str, float]],
    checkpoint: Callable[[Any, int], None],
    static: np.ndarray | None = None,
    progress: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` end to end; after each epoch ``checkpoint(model, epoch)`` and ``measure(model)`` (dev),
    then ``progress(history)`` (e.g. to write a partial report). ``static``: the static side's vectors of the
    training texts (a residual model). Returns the per-epoch history (epoch 0: the initial model, a ``fit`` head
    fitted by ridge regression unless residual; a measurement within an epoch has a fractional ``epoch``; every entry
    has the optimiser ``step``)."""
    torch = require("torch", "export")
    torch.manual_seed(settings.seed)
    rnd = np.random.default_rng(settings.seed)
    sample = rnd.choice(len(train_ids), size=min(settings.ridge_texts, len(train_ids)), replace=False)
    if static is None and model.head_init == "fit":
        ridge_head(model, [train_ids[i] for i in sample], targets[sample])
    history: list[dict[str, Any]] = [{"epoch": 0, "step": 0, **measure(model)}]
    log.info("epoch 0 %s", history[0])
    if progress is not None:
        progress(history)
    names = sorted(corpora)
    docs = {n: torch.from_numpy(np.ascontiguousarray(corpora[n].vectors, dtype=np.float32)) for n in names}
    rows_of = {n: np.asarray([i for i, c in enumerate(corpus_of) if c == n], dtype=np.int64) for n in names}
    position = np.full(len(corpus_of), -1, dtype=np.int64)
    top = {}
    if settings.listwise:
        for n in names:
            position[rows_of[n]] = np.arange(len(rows_of[n]))
            top[n] = teacher_top(targets[rows_of[n]], corpora[n].vectors, settings.top)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(settings.word_embeddings)
    head = list(model.head.parameters())
    trunk = [p for name, p in model.named_parameters() if not name.startswith("head.") and p.requires_grad]
    groups = [{"params": trunk, "lr": settings.lr}] + ([{"params": head, "lr": settings.head_lr}] if head else [])
    optimiser = torch.optim.AdamW(groups, weight_decay=0.01)
    lengths = [len(r) for r in train_ids]
    steps = settings.epochs * -(-len(train_ids) // settings.batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / settings.warmup, max(0.0, (steps - s) / max(1, steps - settings.warmup)))
    )
    y_all = torch.from_numpy(targets)
    done = 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        total_cos = total_list = 0.0
        epoch_batches = batches(lengths, settings.batch, rnd)
        for step, chunk in enumerate(epoch_batches):
            extra = [] if static is None else [torch.from_numpy(static[chunk])]
            predicted = model(*padded([train_ids[i] for i in chunk]), *extra)
            teacher = y_all[chunk]
            cos = (1 - (predicted * teacher).sum(dim=1)).mean()
            loss = cos
            if settings.listwise:
                parts = []
                for n in names:
                    mine = np.flatnonzero([corpus_of[i] == n for i in chunk])
                    if len(mine):
                        picks = top[n][position[chunk[mine]]]
                        noise = rnd.integers(0, len(corpora[n].vectors), size=(len(mine), settings.random))
                        cands = docs[n][torch.from_numpy(np.concatenate([picks, noise], axis=1))]
                        index = torch.from_numpy(mine)
                        parts.append(listwise_kl(predicted[index], teacher[index], cands, settings.tau).sum())
                kl = sum(parts) / len(chunk) if parts else torch.zeros(())
                loss = loss + settings.listwise * kl
                total_list += float(kl.detach()) * len(chunk)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            total_cos += float(cos.detach()) * len(chunk)
            done += 1
            if step % 100 == 0:
                log.info("epoch %d step %d cos loss %.4f", epoch, step, float(cos.detach()))
            if settings.measure_every and done % settings.measure_every == 0 and step + 1 < len(epoch_batches):
                history.append({"epoch": round(epoch - 1 + (step + 1) / len(epoch_batches), 3), "step": done})
                history[-1] |= measure(model)
                log.info("epoch %d step %d %s", epoch, step, history[-1])
                if progress is not None:
                    progress(history)
                model.train()
        checkpoint(model, epoch)
        entry = {
            "epoch": epoch,
            "step": done,
            "train_cos_loss": round(total_cos / len(train_ids), 5),
            "train_listwise": round(total_list / len(train_ids), 5),
        }
        history.append(entry | measure(model))
        log.info("epoch %d %s", epoch, history[-1])
        if progress is not None:
            progress(history)
    return history


def dev_measure(
    dev: Mapping[str, DevSet],
    lexical: Mapping[str, Mapping[str, list[tuple[str, float]]]],
    static: Mapping[str, np.ndarray] | None = None,
) -> Callable[[Any], dict[str, float]]:
    """A ``measure`` for :func:`train`: per dev set, the mean cosine to the teacher, dense nDCG@10 (exact
    search over the set's corpus) and hybrid nDCG@10 (BM25 top 100 in ``lexical`` + dense top 100, min-max,
    the default weights)."""
    from twostage_search.benchmarks.evaluation import evaluate, mean
    from twostage_search.engine.fusion import MINMAX, fuse
    from twostage_search.indexes.hybrid import DEFAULT_WEIGHTS

    weights = [DEFAULT_WEIGHTS["bm25"], DEFAULT_WEIGHTS["dense"]]

    def measure(model: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, d in dev.items():
            vectors = encode(model, d.token_ids, None if static is None else static[name])
            out[f"cos/{name}"] = round(float((vectors * d.teacher).sum(axis=1).mean()), 4)
            if d.corpus is None:
                continue
            dense = dict(zip(d.query_ids, search(vectors, d.corpus, 100), strict=True))
            hybrid = {q: fuse([list(lexical[name][q]), dense[q]], weights, method=MINMAX)[:100] for q in dense}
            for kind, run in (("ndcg", dense), ("hybrid", hybrid)):
                scores = evaluate(d.qrels, list(d.query_ids), run, ("nDCG@10",))["nDCG@10"]
                out[f"{kind}/{name}"] = round(mean(scores), 4)
        return out

    return measure


def search(vectors: np.ndarray, corpus: Corpus, depth: int) -> list[list[tuple[str, float]]]:
    """Exact top ``depth`` of each row of ``vectors`` over ``corpus`` (ties by row, as a stable sort)."""
    out = []
    for start in range(0, len(vectors), 256):
        block = vectors[start : start + 256] @ corpus.vectors.T
        for scores in block:
            top = np.argpartition(-scores, min(depth, len(scores)) - 1)[:depth]
            top = top[np.lexsort((top, -scores[top]))]
            out.append([(corpus.doc_ids[j], float(scores[j])) for j in top])
    return out


def export_onnx(model: Any, path: Path, *, opset: int = 17) -> None:
    """Write ``model`` (:func:`student_module`) as ONNX: inputs ``input_ids``, ``attention_mask`` (int64,
    ``[batch, tokens]``) and for a residual model ``static`` (float32, ``[batch, dim]``), output ``embedding``
    ``[batch, dim]`` (unit vectors)."""
    torch = require("torch", "export")
    model.eval()
    ids = torch.tensor([[101, 2000, 2001, 102]], dtype=torch.long)
    names = ["input_ids", "attention_mask"]
    inputs = [ids, torch.ones_like(ids)]
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    if model.residual:
        names.append("static")
        inputs.append(torch.zeros(1, model.dim))
        axes["static"] = {0: "batch"}
    torch.onnx.export(
        model,
        tuple(inputs),
        str(path),
        input_names=names,
        output_names=["embedding"],
        dynamic_axes=axes,
        opset_version=opset,
        dynamo=False,
    )

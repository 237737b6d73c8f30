"""Training of the static query table (torch): cosine to the teacher's query vector plus a listwise term over
documents, optional per-token weights, and the choice of the epoch by dense nDCG@10 on dev.

The listwise term is what a ranking needs: for each training text, the teacher's own top documents (in the
corpus the text comes from, by the bge-small document vectors of the index) plus random documents of that
corpus are scored by the teacher's and the student's query vectors, and the student's softmax over those scores
(temperature ``tau``) is pulled towards the teacher's (KL divergence, :func:`listwise_kl`). A cosine of 0.91 can
still rank badly because bge-small's vectors share a large common component; the scores over candidate
documents only see the directions along which documents differ.

Per-token weights (``weights``, positive, one per word piece, initially 1) turn the mean into a weighted mean,
``v = bias + Σ w_i table[t_i] / Σ w_i``, so a token can count for almost nothing whatever the query's length
(IDF-like). See ``engine/static_query.py`` for the encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """A corpus's unit document vectors (the index's) with their ids, for candidates and for dev retrieval."""

    doc_ids: Sequence[str]
    vectors: np.ndarray


@dataclass(frozen=True)
class DevSet:
    """Dev queries of one set: their word-piece ids, the teacher's vectors, qrels and the corpus they search."""

    query_ids: Sequence[str]
    token_ids: Sequence[Sequence[int]]
    teacher: np.ndarray
    qrels: Mapping[str, Mapping[str, int]]
    corpus: Corpus | None


@dataclass(frozen=True)
class Settings:
    epochs: int = 6
    lr: float = 3e-3
    batch: int = 256
    hidden: int = 0
    token_weights: bool = False
    listwise: float = 0.0
    tau: float = 0.05
    top: int = 32
    random: int = 32
    seed: int = 0


def listwise_kl(student: Any, teacher: Any, candidates: Any, tau: float) -> Any:
    """Per row: KL(p_t ‖ p_s) with ``p_q = softmax(<q, d_c> / tau)`` over the row's candidates.

    ``student``, ``teacher``: ``(B, d)``; ``candidates``: ``(B, K, d)``. Returns ``(B,)``."""
    torch = __import__("torch")
    s = torch.einsum("bd,bkd->bk", student, candidates) / tau
    t = torch.einsum("bd,bkd->bk", teacher, candidates) / tau
    log_t = torch.log_softmax(t, dim=1)
    return (log_t.exp() * (log_t - torch.log_softmax(s, dim=1))).sum(dim=1)


def teacher_top(targets: np.ndarray, docs: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """``(len(targets), k)`` row indices of each target's ``k`` highest-scoring documents (any order)."""
    out = np.zeros((len(targets), k), dtype=np.int64)
    for start in range(0, len(targets), chunk):
        scores = targets[start : start + chunk] @ docs.T
        out[start : start + chunk] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return out


def dense_ndcg(vectors: np.ndarray, dev: DevSet, depth: int = 10) -> float:
    """Mean nDCG@``depth`` of exact search with ``vectors`` over the dev set's corpus."""
    from twostage_search.benchmarks.evaluation import evaluate, mean

    assert dev.corpus is not None
    run = {}
    for start in range(0, len(vectors), 512):
        scores = vectors[start : start + 512] @ dev.corpus.vectors.T
        top = np.argpartition(-scores, min(depth, scores.shape[1]) - 1, axis=1)[:, :depth]
        for row, unordered in enumerate(top):
            ids = unordered[np.argsort(-scores[row, unordered], kind="stable")]
            run[dev.query_ids[start + row]] = [(dev.corpus.doc_ids[j], float(scores[row, j])) for j in ids]
    return mean(evaluate(dev.qrels, list(dev.query_ids), run, (f"nDCG@{depth}",))[f"nDCG@{depth}"])


def dev_score(entry: Mapping[str, Any]) -> float:
    """The mean dev dense nDCG@10 of a history entry (the mean dev cosine when no set has a corpus)."""
    ndcg = [v for k, v in entry.items() if k.startswith("ndcg/")]
    return float(np.mean(ndcg)) if ndcg else float(np.mean([v for k, v in entry.items() if k.startswith("cos/")]))


def train(
    table: np.ndarray,
    train_ids: Sequence[Sequence[int]],
    targets: np.ndarray,
    corpus_of: Sequence[str | None],
    corpora: Mapping[str, Corpus],
    dev: Mapping[str, DevSet],
    settings: Settings,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Tune the table (and bias, token weights, a residual MLP) towards the teacher; return the weights of the
    epoch with the best mean dev dense nDCG@10 (sets with a corpus; else the lowest mean dev cosine loss) and
    the per-epoch history. ``corpus_of[i]`` names the corpus of training text ``i`` (None: cosine only)."""
    torch = __import__("torch")
    torch.manual_seed(settings.seed)
    torch.set_num_threads(2)
    rnd = np.random.default_rng(settings.seed)
    vocab, dim = table.shape
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(table.copy()), freeze=False, mode="sum", sparse=True)
    log_w = torch.nn.Embedding(vocab, 1, sparse=True)
    torch.nn.init.zeros_(log_w.weight)
    bias = torch.nn.Parameter(torch.zeros(dim))
    mlp = None
    if settings.hidden:
        mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, settings.hidden), torch.nn.ReLU(), torch.nn.Linear(settings.hidden, dim)
        )
        torch.nn.init.zeros_(mlp[2].weight)  # starts as the identity: u = v
        torch.nn.init.zeros_(mlp[2].bias)
    sparse = [bag.weight] + ([log_w.weight] if settings.token_weights else [])
    dense_params = [bias, *(mlp.parameters() if mlp is not None else [])]
    optimisers = [torch.optim.SparseAdam(sparse, lr=settings.lr), torch.optim.Adam(dense_params, lr=settings.lr)]

    def forward(rows: Sequence[Sequence[int]]) -> Any:
        flat = torch.tensor([t for r in rows for t in r] or [0], dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        w = log_w(flat).squeeze(1).exp() if settings.token_weights else torch.ones(len(flat))
        total = torch.zeros(len(rows)).index_add_(
            0, torch.repeat_interleave(torch.arange(len(rows)), lengths), w[: int(lengths.sum())]
        )
        summed = bag(flat, offsets, per_sample_weights=w)
        v = summed / total.clamp_min(1e-12).unsqueeze(1) * (lengths > 0).unsqueeze(1) + bias
        if mlp is not None:
            v = v + mlp(v)
        return torch.nn.functional.normalize(v, dim=1)

    names = sorted(corpora)
    doc_tensor = {
        name: torch.from_numpy(np.ascontiguousarray(corpora[name].vectors, dtype=np.float32)) for name in names
    }
    top: dict[str, np.ndarray] = {}
    rows_of = {name: np.asarray([i for i, c in enumerate(corpus_of) if c == name], dtype=np.int64) for name in names}
    position = np.full(len(corpus_of), -1, dtype=np.int64)
    if settings.listwise:
        for name in names:
            position[rows_of[name]] = np.arange(len(rows_of[name]))
            top[name] = teacher_top(targets[rows_of[name]], corpora[name].vectors, settings.top)
            log.info(
                "teacher candidates: %d texts over %d %s documents",
                len(rows_of[name]),
                len(corpora[name].vectors),
                name,
            )

    def listwise_loss(chunk: np.ndarray, predicted: Any, teacher: Any) -> Any:
        losses = []
        for name in names:
            mine = np.flatnonzero([corpus_of[i] == name for i in chunk])
            if not len(mine):
                continue
            picks = top[name][position[chunk[mine]]]
            noise = rnd.integers(0, len(corpora[name].vectors), size=(len(mine), settings.random))
            candidates = doc_tensor[name][torch.from_numpy(np.concatenate([picks, noise], axis=1))]
            index = torch.from_numpy(mine)
            losses.append(listwise_kl(predicted[index], teacher[index], candidates, settings.tau).sum())
        return sum(losses) / len(chunk) if losses else torch.zeros(())

    def measure() -> dict[str, float]:
        out: dict[str, float] = {}
        with torch.no_grad():
            for name, d in dev.items():
                s = forward(d.token_ids)
                out[f"cos/{name}"] = round(float((s * torch.from_numpy(d.teacher)).sum(dim=1).mean()), 4)
                if d.corpus is not None:
                    out[f"ndcg/{name}"] = round(dense_ndcg(s.numpy(), d), 4)
        return out

    def snapshot() -> dict[str, np.ndarray]:
        out = {"table": bag.weight.detach().numpy().copy(), "bias": bias.detach().numpy().copy()}
        if settings.token_weights:
            out["weights"] = log_w.weight.detach().squeeze(1).exp().numpy().copy()
        if mlp is not None:
            out |= {
                "w1": mlp[0].weight.detach().numpy().T.copy(),
                "b1": mlp[0].bias.detach().numpy().copy(),
                "w2": mlp[2].weight.detach().numpy().T.copy(),
                "b2": mlp[2].bias.detach().numpy().copy(),
            }
        return out

    history: list[dict[str, Any]] = [{"epoch": 0, **measure()}]
    log.info("epoch 0 %s", history[0])
    best, best_score = snapshot(), dev_score(history[0])
    y_all = torch.from_numpy(targets)
    order = np.arange(len(train_ids))
    for epoch in range(1, settings.epochs + 1):
        rnd.shuffle(order)
        total_cos = total_list = 0.0
        for start in range(0, len(order), settings.batch):
            chunk = order[start : start + settings.batch]
            predicted = forward([train_ids[i] for i in chunk])
            teacher = y_all[chunk]
            cos = (1 - (predicted * teacher).sum(dim=1)).mean()
            loss = cos
            if settings.listwise:
                kl = listwise_loss(chunk, predicted, teacher)
                loss = loss + settings.listwise * kl
                total_list += float(kl.detach()) * len(chunk)
            for o in optimisers:
                o.zero_grad()
            loss.backward()
            for o in optimisers:
                o.step()
            total_cos += float(cos.detach()) * len(chunk)
        entry = {"epoch": epoch, "train_cos_loss": round(total_cos / len(order), 5)}
        if settings.listwise:
            entry["train_listwise"] = round(total_list / len(order), 5)
        history.append(entry | measure())
        log.info("epoch %d %s", epoch, history[-1])
        if dev_score(history[-1]) > best_score:
            best, best_score = snapshot(), dev_score(history[-1])
    return best, history

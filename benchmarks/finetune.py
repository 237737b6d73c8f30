"""Fine-tune the top of a BERT cross-encoder on graded pairs, with its frozen lower layers computed once.

The embeddings and the lower ``frozen`` encoder layers are not trained, so their output for each pair is
computed once (:func:`frozen_states`, cached to a file) and every epoch, setting and evaluation runs only the
upper layers, the pooler and the classifier (:class:`UpperModel`). A pair's states are kept unpadded: a
padded position never changes a real one (it is masked out of attention), so re-padding per batch gives
the full model's output. The logit is mapped to the grade scale by an affine ``a * logit + b`` fitted by
least squares on the training pairs' zero-shot logits before training, so training starts from the
cross-encoder's own ranking; the loss is the squared error on the grade (``loss="mse"``).

With an ordinal head (``UpperModel(..., grades=(1, 2, 3, 4))``) the logit feeds a cumulative-logit model
instead, P(grade ≤ g_k) = σ(θ_k − a·logit), its scale ``a`` and cuts θ fitted by maximum likelihood on the
training pairs' zero-shot logits before training (``UpperModel.fit_head``) and trained jointly with the
layers; the prediction is E[grade]. Its losses: ``"ordinal"``, the negative log-likelihood of the grade;
``"ordinal+mse"``, that plus the squared error of E[grade] (which quadratic κ rewards).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.optional import require

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainSetting:
    """One fine-tuning run: learning rate, epochs, batch size, seed and the label of its training data."""

    lr: float
    epochs: int
    data: str = "crowdflower"
    batch_size: int = 32
    seed: int = 13
    weight_decay: float = 0.01
    loss: str = "mse"


LOSSES = ("mse", "ordinal", "ordinal+mse")


def encode(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> list[dict[str, list[int]]]:
    """Token ids and type ids of each (query, passage) pair, truncated longest-first, unpadded."""
    enc = tokenizer([q for q, _ in pairs], [p for _, p in pairs], truncation="longest_first", max_length=max_length)
    return [{"input_ids": i, "token_type_ids": t} for i, t in zip(enc["input_ids"], enc["token_type_ids"], strict=True)]


def save_states(path: Path, states: Sequence[np.ndarray]) -> None:
    """Write unpadded per-pair states (float32) to an ``.npz`` file, atomically."""
    lengths = np.array([len(s) for s in states], dtype=np.int64)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, lengths=lengths, states=np.concatenate(states).astype(np.float32))
    tmp.replace(path)


def load_states(path: Path) -> list[np.ndarray]:
    """The per-pair states :func:`save_states` wrote."""
    with np.load(path) as f:
        lengths = f["lengths"]
        flat = f["states"]
    ends = np.cumsum(lengths)
    return [flat[e - n : e] for n, e in zip(lengths, ends, strict=True)]


def token_lengths(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Percentiles of the pairs' token counts (untruncated, up to 512)."""
    lengths = [len(e["input_ids"]) for e in encode(tokenizer, pairs, 512)]
    q = np.percentile(lengths, [50, 90, 99, 100])
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float(q[3]), "pairs": len(lengths)}


def _pad(rows: Sequence[Any], width: int, torch: Any) -> tuple[Any, Any]:
    """Stack variable-length rows (1-D id lists or 2-D state arrays) into a zero-padded batch and its mask."""
    first = np.asarray(rows[0])
    out = np.zeros((len(rows), width, *first.shape[1:]), dtype=first.dtype)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        a = np.asarray(r)
        out[i, : len(a)] = a
        mask[i, : len(a)] = 1
    return torch.from_numpy(out), torch.from_numpy(mask)


def additive_mask(mask: Any, dtype: Any, torch: Any) -> Any:
    """A (batch, 1, 1, width) additive attention mask: 0 where attended, the dtype's minimum elsewhere."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def frozen_states(
    model: Any, encoded: Sequence[dict[str, list[int]]], frozen: int, batch_size: int = 64
) -> list[np.ndarray]:
    """Each pair's hidden states after the embeddings and ``frozen`` encoder layers, unpadded (float32)."""
    torch = require("torch", "train")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    out: list[np.ndarray] = [np.zeros(0)] * len(encoded)
    bert = model.bert
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(encoded[i]["input_ids"]) for i in chunk)
            ids, mask = _pad([encoded[i]["input_ids"] for i in chunk], width, torch)
            types, _ = _pad([encoded[i]["token_type_ids"] for i in chunk], width, torch)
            h = bert.embeddings(input_ids=ids, token_type_ids=types)
            ext = additive_mask(mask, h.dtype, torch)
            for layer in bert.encoder.layer[:frozen]:
                h = _layer(layer, h, ext)
            for row, i in enumerate(chunk):
                out[i] = h[row, : len(encoded[i]["input_ids"])].numpy().copy()
    return out


def _layer(layer: Any, h: Any, ext: Any) -> Any:
    out = layer(h, attention_mask=ext)
    return out[0] if isinstance(out, tuple) else out


class UpperModel:
    """The trainable part: encoder layers from ``frozen`` on, the pooler, the classifier and a grade head.

    The head is the affine ``a·logit + b`` or, when ``grades`` (the K ascending grades) is given, a
    cumulative-logit head: ``head`` holds ``[a, θ_1 … θ_{K−1}]`` and the prediction is E[grade].
    """

    def __init__(self, model: Any, frozen: int, grades: Sequence[int] = ()) -> None:
        torch = require("torch", "train")
        self.torch = torch
        self.model = model
        self.frozen = frozen
        self.grades = tuple(grades)
        if len(self.grades) == 1:
            raise ValueError("an ordinal head needs at least two grades")
        self.affine = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
        self.head = torch.nn.Parameter(torch.arange(len(self.grades), dtype=torch.float32))
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in model.bert.encoder.layer[frozen:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        for p in (*model.bert.pooler.parameters(), *model.classifier.parameters()):
            p.requires_grad_(True)

    def parameters(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad] + [self.head if self.grades else self.affine]

    def probabilities(self, logit: Any) -> Any:
        """P(grade) of each logit under the ordinal head: a (n, K) tensor."""
        torch = self.torch
        cumulative = torch.sigmoid(self.head[1:][None, :] - self.head[0] * logit[:, None])
        ones = torch.ones_like(logit)[:, None]
        return torch.diff(torch.cat([torch.zeros_like(ones), cumulative, ones], dim=1), dim=1)

    def grade(self, logit: Any) -> Any:
        """The predicted grade of each logit: a·logit + b, or E[grade] under the ordinal head."""
        if not self.grades:
            return self.affine[0] * logit + self.affine[1]
        return self.probabilities(logit) @ self.torch.tensor(self.grades, dtype=logit.dtype)

    def loss(self, logit: Any, target: Any, kind: str) -> Any:
        """The training loss of a batch: ``kind`` is one of :data:`LOSSES` (ordinal ones need the ordinal head)."""
        functional = self.torch.nn.functional
        if kind == "mse":
            return functional.mse_loss(self.grade(logit), target)
        if kind not in LOSSES or not self.grades:
            raise ValueError(f"loss {kind!r}: one of {LOSSES}; the ordinal ones need an ordinal head")
        probs = self.probabilities(logit)
        index = self.torch.bucketize(target, self.torch.tensor(self.grades, dtype=target.dtype))
        nll = -self.torch.log(probs.gather(1, index[:, None])[:, 0].clamp_min(1e-9)).mean()
        if kind == "ordinal":
            return nll
        return nll + functional.mse_loss(probs @ self.torch.tensor(self.grades, dtype=logit.dtype), target)

    def logits(self, states: Sequence[np.ndarray]) -> Any:
        """The classifier logit of a batch of frozen states (padded here)."""
        torch = self.torch
        h, mask = _pad(states, max(len(s) for s in states), torch)
        ext = additive_mask(mask, h.dtype, torch)
        for layer in self.model.bert.encoder.layer[self.frozen :]:
            h = _layer(layer, h, ext)
        pooled = self.model.bert.pooler(h)
        return self.model.classifier(self.model.dropout(pooled))[:, 0]

    def predict(self, states: Sequence[np.ndarray], batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """(logits, predicted grades: a·logit + b, or E[grade] under the ordinal head) of every pair, eval mode."""
        torch = self.torch
        self.model.eval()
        order = sorted(range(len(states)), key=lambda i: len(states[i]))
        logits = np.zeros(len(states), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                logits[chunk] = self.logits([states[i] for i in chunk]).numpy()
            grades = self.grade(torch.from_numpy(logits)).numpy()
        return logits, np.asarray(grades, dtype=np.float64)

    def fit_affine(self, states: Sequence[np.ndarray], grades: Sequence[float]) -> tuple[float, float]:
        """Least-squares ``grade ≈ a·logit + b`` on the current logits (before training)."""
        logits, _ = self.predict(states)
        a, b = np.polyfit(logits, np.asarray(grades, dtype=np.float64), 1)
        self.affine.data = self.torch.tensor([float(a), float(b)])
        return float(a), float(b)

    def fit_head(self, states: Sequence[np.ndarray], grades: Sequence[float]) -> tuple[float, ...]:
        """Fit the ordinal head ``[a, θ…]`` by maximum likelihood on the current logits (before training)."""
        head = ordinal_head(self.predict(states)[0], grades, self.grades)
        self.head.data = self.torch.tensor(head, dtype=self.torch.float32)
        return head

    def state(self) -> dict[str, Any]:
        """The trained tensors only (upper layers, pooler, classifier, affine): what a checkpoint holds."""
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        model = {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in names}
        return {"model": model, "affine": self.affine.detach().clone(), "head": self.head.detach().clone()}

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=False)
        self.affine.data = state["affine"].clone()
        if "head" in state:  # checkpoints written before the ordinal head have none
            self.head.data = state["head"].clone()


def ordinal_head(logits: np.ndarray, grades: Sequence[float], scale: Sequence[int]) -> tuple[float, ...]:
    """``[a, θ_1 … θ_{K−1}]`` of the cumulative-logit model P(grade ≤ g_k) = σ(θ_k − a·logit), fitted by maximum
    likelihood (:func:`~twostage_search.rerankers.ordinal.fit_ordinal`, which reads the standardised logit)."""
    from twostage_search.rerankers.ordinal import fit_ordinal

    fitted = fit_ordinal(["logit"], np.asarray(logits)[:, None], [int(g) for g in grades], scale)
    a = fitted.coef[0] / fitted.scale[0]  # fit_ordinal's z is (logit − mean) / scale
    return (float(a), *(float(c + a * fitted.mean[0]) for c in fitted.cuts))


def train_epochs(
    upper: UpperModel,
    states: Sequence[np.ndarray],
    grades: Sequence[float],
    setting: TrainSetting,
    on_epoch: Any,
    start_epoch: int = 0,
    optimizer_state: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Train with AdamW on ``setting.loss``, calling ``on_epoch(epoch, optimizer)`` after each epoch.

    Batches are drawn by a seeded shuffle per epoch (``setting.seed + epoch``); the learning rate decays
    linearly to 0 over all epochs after a 10% warm-up.
    """
    torch = upper.torch
    torch.manual_seed(setting.seed)
    opt = torch.optim.AdamW(upper.parameters(), lr=setting.lr, weight_decay=setting.weight_decay)
    steps_per_epoch = (len(states) + setting.batch_size - 1) // setting.batch_size
    total = steps_per_epoch * setting.epochs
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state["optimizer"])
        sched.load_state_dict(optimizer_state["scheduler"])
    y = torch.tensor(np.asarray(grades, dtype=np.float32))
    history = []
    for epoch in range(start_epoch, setting.epochs):
        upper.model.train()
        torch.manual_seed(setting.seed + epoch)
        order = np.random.default_rng(setting.seed + epoch).permutation(len(states))
        started, loss_sum = time.perf_counter(), 0.0
        for start in range(0, len(order), setting.batch_size):
            idx = order[start : start + setting.batch_size]
            loss = upper.loss(upper.logits([states[i] for i in idx]), y[idx], setting.loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / len(order), "epoch_s": time.perf_counter() - started}
        if setting.loss == "mse":
            row["train_mse"] = row["train_loss"]
        log.info("epoch %d: train %s %.4f (%.0f s)", epoch + 1, setting.loss, row["train_loss"], row["epoch_s"])
        history.append(row)
        on_epoch(epoch + 1, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    return history

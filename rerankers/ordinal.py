"""A cumulative-link (ordinal logistic) model: K ordered grades from a few numeric features.

McCullagh (1980), "Regression models for ordinal data": with standardised features ``z`` and weights ``β``,

    P(grade ≤ g_k | z) = σ(θ_k − z·β),   k = 1 … K−1,   θ_1 < … < θ_{K−1},

so P(g_k) is the difference of neighbouring cumulative probabilities and E[grade] = Σ g_k·P(g_k).
Fitting is by maximum likelihood with statsmodels' ``OrderedModel`` (:func:`fit_ordinal`, the ``train``
extra); predicting needs only numpy, so a fitted model is a small JSON file (:meth:`OrdinalModel.save`).

A model's hard grade is either the most probable one (``grade_cuts`` empty) or E[grade] cut by K−1
ascending thresholds (``grade_cuts``, chosen on held-out data: quadratic κ rewards getting the order
right more than the mode).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.atomic import atomic_write_text, read_json_file
from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require

FORMAT = "twostage-ordinal/1"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)))  # σ without overflow


@dataclass(frozen=True, slots=True)
class OrdinalModel:
    """A fitted cumulative-logit model (see the module docstring).

    Attributes:
        features: feature names, in column order.
        mean, scale: standardisation of each feature (``z = (x − mean) / scale``).
        coef: β, one weight per feature.
        cuts: θ_1 < … < θ_{K−1}.
        grades: the K grades, ascending (e.g. ``(1, 2, 3, 4)``).
        grade_cuts: K−1 ascending thresholds on E[grade] that give the hard grade; empty: the most probable.
        meta: free-form provenance (training data, settings chosen on dev).
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    cuts: tuple[float, ...]
    grades: tuple[int, ...]
    grade_cuts: tuple[float, ...] = ()
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise InputError("ordinal model: features, mean, scale and coef must have one entry per feature")
        if len(self.cuts) != len(self.grades) - 1 or len(self.grades) < 2:
            raise InputError("ordinal model: need K ≥ 2 grades and K−1 cuts")
        if any(b <= a for a, b in zip(self.cuts, self.cuts[1:], strict=False)):
            raise InputError("ordinal model: cuts must be strictly ascending")
        if self.grade_cuts and len(self.grade_cuts) != len(self.cuts):
            raise InputError("ordinal model: grade_cuts must be empty or K−1 thresholds")
        if any(s <= 0 for s in self.scale):
            raise InputError("ordinal model: every scale must be positive")

    # ------------------------------------------------------------------------------------ predict
    def matrix(self, rows: Sequence[dict[str, float]]) -> np.ndarray:
        """The feature matrix of ``rows`` (each a {name: value} mapping holding every feature)."""
        try:
            return np.array([[float(r[f]) for f in self.features] for r in rows], dtype=np.float64).reshape(
                len(rows), len(self.features)
            )
        except KeyError as e:
            raise InputError(f"ordinal model: feature {e.args[0]!r} missing") from None

    def linear(self, x: np.ndarray) -> np.ndarray:
        """z·β for each row of the raw feature matrix ``x``."""
        z = (np.asarray(x, dtype=np.float64) - np.array(self.mean)) / np.array(self.scale)
        return np.asarray(z @ np.array(self.coef))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """P(grade) per row: an (n, K) array whose rows sum to 1."""
        eta = self.linear(x)[:, None]
        cumulative = _sigmoid(np.array(self.cuts)[None, :] - eta)
        ones = np.ones((len(eta), 1))
        return np.diff(np.hstack([np.zeros_like(ones), cumulative, ones]), axis=1)

    def expected(self, x: np.ndarray) -> np.ndarray:
        """E[grade] = Σ g·P(g) per row."""
        return np.asarray(self.probabilities(x) @ np.array(self.grades, dtype=np.float64))

    def grade(self, x: np.ndarray) -> list[int]:
        """The hard grade per row (see ``grade_cuts``)."""
        if self.grade_cuts:
            e = self.expected(x)
            return [self.grades[int(np.searchsorted(self.grade_cuts, v, side="right"))] for v in e]
        return [self.grades[int(i)] for i in np.argmax(self.probabilities(x), axis=1)]

    def nll(self, x: np.ndarray, grades: Sequence[int]) -> float:
        """Mean negative log-likelihood of ``grades`` (the training loss)."""
        index = {g: i for i, g in enumerate(self.grades)}
        p = self.probabilities(x)[np.arange(len(grades)), [index[g] for g in grades]]
        return float(-np.mean(np.log(np.clip(p, 1e-12, None))))

    # --------------------------------------------------------------------------------- persist
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> OrdinalModel:
        if record.get("format") != FORMAT:
            raise InputError(f"not an ordinal model file (format {record.get('format')!r}, expected {FORMAT!r})")
        fields = {k: v for k, v in record.items() if k != "format"}
        for k in ("features", "mean", "scale", "coef", "cuts", "grades", "grade_cuts"):
            fields[k] = tuple(fields.get(k, ()))
        return cls(**fields)

    def save(self, path: str | Path) -> None:
        """Write the model as JSON, atomically (temp file beside it, then rename)."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> OrdinalModel:
        return cls.from_json(read_json_file(path, "ordinal model file"))

    def with_grade_cuts(self, cuts: Sequence[float]) -> OrdinalModel:
        return replace(self, grade_cuts=tuple(float(c) for c in cuts))


def null_model(features: Sequence[str], x: np.ndarray, grades: Sequence[int], scale: Sequence[int]) -> OrdinalModel:
    """The intercept-only model (β = 0, θ from the grade proportions): the loss a fit starts from."""
    x = np.asarray(x, dtype=np.float64)
    counts = np.array([sum(1 for g in grades if g == s) for s in scale], dtype=np.float64) + 0.5
    cumulative = np.cumsum(counts)[:-1] / counts.sum()
    cuts = np.log(cumulative / (1 - cumulative))
    sd = x.std(axis=0)
    return OrdinalModel(
        tuple(features),
        tuple(float(m) for m in x.mean(axis=0)),
        tuple(float(s) if s > 0 else 1.0 for s in sd),
        tuple(0.0 for _ in features),
        tuple(float(c) for c in cuts),
        tuple(scale),
    )


def fit_ordinal(
    features: Sequence[str], x: np.ndarray, grades: Sequence[int], scale: Sequence[int], *, maxiter: int = 500
) -> OrdinalModel:
    """Fit the cumulative-logit model by maximum likelihood (statsmodels ``OrderedModel``, BFGS).

    Features are standardised first (their mean and scale are kept in the model). Every grade of
    ``scale`` must occur in ``grades``.
    """
    ordinal = require("statsmodels.miscmodels.ordinal_model", "train")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(grades) or x.shape[1] != len(features):
        raise InputError(f"fit_ordinal: x has shape {x.shape}, expected ({len(grades)}, {len(features)})")
    missing = [g for g in scale if g not in set(grades)]
    if missing:
        raise InputError(f"fit_ordinal: grades {missing} never occur in the training labels")
    start = null_model(features, x, grades, scale)
    z = (x - np.array(start.mean)) / np.array(start.scale)
    codes = np.array([list(scale).index(g) for g in grades])
    model = ordinal.OrderedModel(codes, z, distr="logit")
    result = model.fit(method="bfgs", maxiter=maxiter, disp=False)
    params = np.asarray(result.params, dtype=np.float64)
    k = len(features)
    cuts = model.transform_threshold_params(params)[1:-1]  # drops the −inf/+inf ends
    return replace(start, coef=tuple(float(b) for b in params[:k]), cuts=tuple(float(c) for c in cuts))

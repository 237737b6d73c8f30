"""A stacked graded model: gradient-boosted trees (LightGBM, multiclass) that give P(grade) from a pair's features.

The trees give P(g) for each of the K grades (softmax over K boosted scores); E[grade] = Σ g·P(g); the hard
grade is E[grade] cut by K−1 ascending thresholds (``grade_cuts``, chosen on held-out data), or the most probable
grade when there are none. A fitted model is one JSON file holding LightGBM's own text dump of the trees
(:meth:`StackedModel.save`); fitting and predicting need the ``graded`` extra (lightgbm).

Training is deterministic: one thread, LightGBM's ``deterministic`` mode, no bagging, a fixed seed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.atomic import atomic_write_text, read_json_file
from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require

FORMAT = "twostage-stacked/1"
# Settings every fit uses (the rest come from the caller's ``params``): deterministic, single-threaded, quiet.
FIXED = {
    "objective": "multiclass",
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
    "seed": 13,
    "verbosity": -1,
}
DEFAULT_PARAMS = {"learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 40, "lambda_l2": 1.0}


@dataclass(frozen=True)
class StackedModel:
    """A fitted stacked model (see the module docstring).

    Attributes:
        features: feature names, in column order.
        grades: the K grades, ascending.
        booster: LightGBM's text dump of the trees (``Booster.model_to_string``).
        grade_cuts: K−1 ascending thresholds on E[grade] that give the hard grade; empty: the most probable.
        meta: free-form provenance (training data, settings chosen on dev).
    """

    features: tuple[str, ...]
    grades: tuple[int, ...]
    booster: str
    grade_cuts: tuple[float, ...] = ()
    meta: dict[str, Any] | None = None
    _trees: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.grades) < 2 or list(self.grades) != sorted(set(self.grades)):
            raise InputError("stacked model: need K ≥ 2 distinct grades, ascending")
        if self.grade_cuts and (
            len(self.grade_cuts) != len(self.grades) - 1 or list(self.grade_cuts) != sorted(self.grade_cuts)
        ):
            raise InputError("stacked model: grade_cuts must be empty or K−1 ascending thresholds")
        lgb = require("lightgbm", "graded")
        trees = lgb.Booster(model_str=self.booster)
        if trees.num_feature() != len(self.features):
            raise InputError(
                f"stacked model: the trees read {trees.num_feature()} features, {len(self.features)} named"
            )
        object.__setattr__(self, "_trees", trees)

    # ------------------------------------------------------------------------------------ predict
    def matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """The feature matrix of ``rows`` (each a {name: value} mapping holding every feature)."""
        try:
            return np.array([[float(r[f]) for f in self.features] for r in rows], dtype=np.float64).reshape(
                len(rows), len(self.features)
            )
        except KeyError as e:
            raise InputError(f"stacked model: feature {e.args[0]!r} missing") from None

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """P(grade) per row: an (n, K) array whose rows sum to 1."""
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return np.zeros((0, len(self.grades)))
        p = np.asarray(self._trees.predict(x, num_threads=1), dtype=np.float64)
        return p.reshape(len(x), len(self.grades))

    def expected(self, x: np.ndarray) -> np.ndarray:
        """E[grade] = Σ g·P(g) per row."""
        return np.asarray(self.probabilities(x) @ np.array(self.grades, dtype=np.float64))

    def grade(self, x: np.ndarray) -> list[int]:
        """The hard grade per row (see ``grade_cuts``)."""
        if self.grade_cuts:
            return [self.grades[int(np.searchsorted(self.grade_cuts, v, side="right"))] for v in self.expected(x)]
        return [self.grades[int(i)] for i in np.argmax(self.probabilities(x), axis=1)]

    def with_grade_cuts(self, cuts: Sequence[float]) -> StackedModel:
        return replace(self, grade_cuts=tuple(float(c) for c in cuts))

    @property
    def rounds(self) -> int:
        """The number of boosting rounds (trees per grade)."""
        return int(self._trees.current_iteration())

    def head(self, rounds: int) -> StackedModel:
        """The model made of the first ``rounds`` boosting rounds only (what fitting that many would give)."""
        if not 1 <= rounds <= self.rounds:
            raise InputError(f"stacked model: head({rounds}) of a model with {self.rounds} rounds")
        return replace(self, booster=self._trees.model_to_string(num_iteration=rounds))

    # --------------------------------------------------------------------------------- persist
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "features": list(self.features),
            "grades": list(self.grades),
            "grade_cuts": list(self.grade_cuts),
            "meta": self.meta,
            "booster": self.booster,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> StackedModel:
        if record.get("format") != FORMAT:
            raise InputError(f"not a stacked model file (format {record.get('format')!r}, expected {FORMAT!r})")
        try:
            return cls(
                tuple(record["features"]),
                tuple(int(g) for g in record["grades"]),
                str(record["booster"]),
                tuple(float(c) for c in record.get("grade_cuts", ())),
                record.get("meta"),
            )
        except KeyError as e:
            raise InputError(f"stacked model file lacks {e.args[0]!r}") from None

    def save(self, path: str | Path) -> None:
        """Write the model as JSON, atomically (temp file beside it, then rename)."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> StackedModel:
        return cls.from_json(read_json_file(path, "stacked model file"))


def fit_stacked(
    features: Sequence[str],
    x: np.ndarray,
    grades: Sequence[int],
    scale: Sequence[int],
    *,
    rounds: int = 200,
    params: Mapping[str, Any] | None = None,
) -> StackedModel:
    """Fit the trees on ``x`` (one row per pair, one column per feature) and the human ``grades``.

    ``params`` are LightGBM parameters (default :data:`DEFAULT_PARAMS`); the settings of :data:`FIXED` always
    apply. Every grade of ``scale`` must occur in ``grades``.
    """
    lgb = require("lightgbm", "graded")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(grades) or x.shape[1] != len(features):
        raise InputError(f"fit_stacked: x has shape {x.shape}, expected ({len(grades)}, {len(features)})")
    missing = [g for g in scale if g not in set(grades)]
    if missing:
        raise InputError(f"fit_stacked: grades {missing} never occur in the training labels")
    if rounds < 1:
        raise InputError("fit_stacked: rounds must be ≥ 1")
    codes = np.array([list(scale).index(g) for g in grades])
    settings = {**DEFAULT_PARAMS, **(params or {}), **FIXED, "num_class": len(scale)}
    data = lgb.Dataset(x, label=codes, feature_name=[f.replace(" ", "_") for f in features], free_raw_data=False)
    booster = lgb.train(settings, data, num_boost_round=rounds)
    return StackedModel(tuple(features), tuple(scale), booster.model_to_string())


def out_of_fold(
    features: Sequence[str],
    x: np.ndarray,
    grades: Sequence[int],
    queries: Sequence[str],
    scale: Sequence[int],
    setting: Mapping[str, Any],
    rounds: int,
    folds: int = 4,
    seed: int = 13,
) -> list[float]:
    """E[grade] of each row from trees fitted (as :func:`fit_stacked`) on the other folds' rows, the folds grouping
    rows by query (``queries``: each row's query id; a seeded shuffle of the sorted ids dealt into ``folds``), so
    no query's rows are predicted by trees that saw them."""
    order = sorted(set(queries))
    np.random.default_rng(seed).shuffle(order)
    fold = {q: i % folds for i, q in enumerate(order)}
    of = np.array([fold[q] for q in queries])
    out = np.zeros(len(grades))
    labels = np.array(grades)
    for k in range(folds):
        model = fit_stacked(features, x[of != k], list(labels[of != k]), scale, rounds=rounds, params=setting)
        out[of == k] = model.expected(x[of == k])
    return [float(v) for v in out]

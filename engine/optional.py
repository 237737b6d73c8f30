"""Lazy import of optional heavy dependencies with an install hint (cf. ir_measures ``_check_available``)."""

from __future__ import annotations

import importlib
from types import ModuleType

from twostage_search.engine.errors import MissingDependencyError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is required for this feature: pip install 'twostage-search[{extra}]' ({exc})"
        ) from exc

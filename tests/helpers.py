"""Constants and helpers shared by the tests (imported as ``tests.helpers``, never from conftest)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny"


def need(module: str, extra: str) -> ModuleType:
    """Import ``module`` for a test module; skip without it, except in CI, where a skip is a failure.

    CI installs every extra, so a missing module there is a broken install, not an optional feature.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} missing: pip install -e '.[{extra}]' ({exc})"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


def use_osmem() -> bool:
    """``TWOSTAGE_TEST_OPENSEARCH=osmem``: run the OpenSearch tests on the osmem-server emulator (a fast local
    loop; not proof of correctness) instead of a real local node. $OPENSEARCH_URL wins over both."""
    return os.environ.get("TWOSTAGE_TEST_OPENSEARCH") == "osmem" and not os.environ.get("OPENSEARCH_URL")

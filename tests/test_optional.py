"""Lazy optional imports: the install hint, and torch's process-wide thread count set on request only."""

from __future__ import annotations

import logging
import warnings

import pytest

from twostage_search.engine.errors import InputError, MissingDependencyError
from twostage_search.engine.optional import require, sentence_transformers_part, torch_with_threads


def test_require_names_the_distribution_and_extra() -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install 'twostage-search\[llm\]'"):
        require("twostage_no_such_module", "llm")


@pytest.mark.parametrize("threads", [0, -2])
def test_thread_count_below_one_is_refused(threads: int) -> None:
    with pytest.raises(InputError, match="threads must be ≥ 1"):
        torch_with_threads(threads, "rerank")


def test_threads_none_leaves_torch_alone() -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    assert torch_with_threads(None, "rerank") is torch
    assert torch.get_num_threads() == before


def test_a_changed_count_is_set_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    try:
        with caplog.at_level(logging.INFO, logger="twostage_search.engine.optional"):
            torch_with_threads(other, "rerank")
            assert torch.get_num_threads() == other
            torch_with_threads(other, "rerank")  # same count: nothing to say
        changes = [r.getMessage() for r in caplog.records]
        assert changes == [f"torch intra-op threads (process-wide): {before} -> {other}"]
    finally:
        torch.set_num_threads(before)


def test_sentence_transformers_parts_from_the_installed_version() -> None:
    pytest.importorskip("sentence_transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # 6.x warns on its old paths: they are not taken
        modules = sentence_transformers_part("modules", "rerank")
        losses = sentence_transformers_part("losses", "rerank")
    assert {"Transformer", "Pooling", "Normalize"} <= set(dir(modules))
    assert isinstance(losses.MarginMSELoss, type)
    with pytest.raises(KeyError):
        sentence_transformers_part("trainers", "rerank")

"""Batches with a progress bar: how every index build walks its corpus."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

T = TypeVar("T")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items (the last one may be shorter; none for no items).

    ``itertools.batched`` does the same from Python 3.12 on, as tuples.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "doc") -> Any:
    """A tqdm progress bar (disabled: a no-op with the same interface); use it as a context manager."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)

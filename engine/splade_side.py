"""What the torch and ONNX SPLADE side encoders share: their argument checks and vocabulary limits."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def check_limits(*, max_length: int, batch_size: int, top_n: int | None) -> None:
    """Raise ``ValueError`` for a length, batch size or term count a side encoder cannot use."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if top_n is not None and top_n < 1:
        raise ValueError("top_n must be positive or None")


def vocabulary_subset(
    vocab: Sequence[str], current: Sequence[int] | None, terms: Collection[str]
) -> tuple[list[int], list[str]]:
    """The vocabulary ids (ascending) among ``current`` (``None``: all) whose term is in ``terms``, and
    their terms: the output columns of an encoder limited to ``terms``."""
    wanted = set(terms)
    keep = [i for i in (range(len(vocab)) if current is None else current) if vocab[i] in wanted]
    return keep, [vocab[i] for i in keep]

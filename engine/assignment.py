"""Sticky assignment of users to an experiment's arms: the same user always lands in the same arm.

A pure function of (experiment name, user id) and the arms' weights, so the service that assigns users and a
benchmark that needs users of a given arm agree without sharing any state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def bucket(experiment: str, user_id: str) -> float:
    """A stable, uniform point in [0, 1) for (experiment, user): blake2b, never Python's salted ``hash``."""
    digest = hashlib.blake2b(f"{experiment}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(experiment: str, arms: Sequence[tuple[str, float]], user_id: str) -> str:
    """The arm of ``user_id`` among ``arms`` ((name, weight) pairs, weights summing to 1), split by weight."""
    u = bucket(experiment, user_id)
    acc = 0.0
    positive = [(name, weight) for name, weight in arms if weight > 0]
    if not positive:
        raise ValueError("no arm has a positive weight")
    for name, weight in positive:
        acc += weight
        if u < acc:
            return name
    return positive[-1][0]  # rounding: u just below 1 with weights summing to 1 - ε

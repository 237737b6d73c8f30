"""``argparse`` value types shared by the command line and the benchmark scripts."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twostage_search.engine.errors import InputError


def positive_int(text: str) -> int:
    """An integer ≥ 1 (``argparse`` ``type=``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (``argparse`` ``type=``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def scalar(text: str) -> int | float | str:
    """``text`` as an int, else a float, else the string itself (option values on a command line)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def key_values(pairs: Iterable[str], what: str) -> dict[str, Any]:
    """``["key=value", ...]`` → a dict, values through :func:`scalar`; an :class:`InputError` naming ``what``
    for a pair without ``=`` or key."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError(f"{what}: {pair!r} is not key=value")
        options[key] = scalar(raw)
    return options


def named_path(spec: str, flag: str) -> tuple[str, Path, dict[str, Any]]:
    """``NAME=PATH[,key=value...]`` → (name, path, options), values through :func:`scalar`; an
    :class:`InputError` naming ``flag`` for a spec without a name or a path."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise InputError(f"{flag} wants NAME=PATH[,option=value...], got {spec!r}")
    path, *pairs = rest.split(",")
    return name, Path(path), key_values(pairs, f"{flag} {name}")

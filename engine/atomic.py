"""Atomic writes: build in a temp directory (or file) beside the target, rename on success.

Used by every writer of a directory that must never be seen half-written: index builds, trained
models, reassembled model files, dataset downloads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twostage_search.engine.errors import InputError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = True, marker: str) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``target``; on success it replaces ``target``.

    On any exception the temp directory is removed and ``target`` is left exactly as it was. An existing
    non-empty ``target`` is only replaced if it holds ``marker`` (e.g. an index's ``meta.json``), i.e. was
    written by twostage, so a typo cannot wipe an unrelated directory.
    """
    target = Path(target).absolute()
    if target.exists():
        if not target.is_dir():
            raise InputError(f"index path exists and is not a directory: {target}")
        if any(target.iterdir()) and not (target / marker).is_file():
            raise InputError(f"refusing to overwrite a directory twostage did not write (no {marker}): {target}")
        if not overwrite:
            raise InputError(f"index already exists: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    log.info("replaced %s", target)


VERSIONS = ".versions"


@contextlib.contextmanager
def versioned_directory(target: str | Path, *, overwrite: bool = True, marker: str, keep: int = 2) -> Iterator[Path]:
    """Build a new version beside ``target`` and flip the symlink ``target`` to it with one ``os.replace``.

    Versions live in ``<target>.versions/<stamp>-<id>``; ``target`` is a relative symlink to the current
    one. A reader that resolved ``target`` when it opened (the service does) keeps reading its version
    — every file of it — until it reopens; readers that open ``target`` after the flip see only the new
    one. The newest ``keep`` versions are kept (the one being served may still be read by requests in
    flight), older ones removed. A ``target`` that is still a plain directory (built before versions)
    is moved into the versions directory first. On failure nothing changes.
    """
    target = Path(target).absolute()
    versions = target.parent / (target.name + VERSIONS)
    if target.exists() or target.is_symlink():
        current = target.resolve()
        if not current.is_dir():
            raise InputError(f"index path exists and is not a directory: {target}")
        if any(current.iterdir()) and not (current / marker).is_file():
            raise InputError(f"refusing to overwrite a directory twostage did not write (no {marker}): {target}")
        if not overwrite:
            raise InputError(f"index already exists: {target}")
    versions.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    built = versions / f"{stamp}-{uuid.uuid4().hex[:8]}"
    with atomic_directory(built, marker=marker) as tmp:
        yield tmp
    if target.exists() and not target.is_symlink():  # a plain directory from before versions: move it in
        os.rename(target, versions / f"00000000T000000-{uuid.uuid4().hex[:8]}")
    link = target.parent / f".{target.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(built, target.parent), link)
    os.replace(link, target)
    done = [p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for old in sorted(done, key=lambda p: (p.stat().st_mtime, p.name))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("%s now points at %s", target, built.name)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temp file beside it (parents created), then one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_json_file(path: str | Path, what: str) -> Any:
    """The JSON value in ``path`` (a file :func:`atomic_write_text` wrote); a missing file or one that is not
    JSON is an :class:`InputError` naming ``what`` (e.g. ``"stacked model file"``) or the path."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e})") from None

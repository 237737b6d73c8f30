"""Index directories: ``meta.json`` and atomic builds (temp dir + rename)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import IndexLoadError, InputError

log = logging.getLogger(__name__)

META = "meta.json"
FORMAT_VERSION = 1


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read and check an index's ``meta.json``."""
    path = Path(path)
    meta_path = path / META
    if not path.is_dir():
        raise IndexLoadError(f"index not found: {path}")
    if not meta_path.is_file():
        raise IndexLoadError(f"not a twostage index (no {META}): {path}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IndexLoadError(f"corrupt {meta_path}: {exc}") from None
    if not isinstance(meta, dict) or "backend" not in meta:
        raise IndexLoadError(f"corrupt {meta_path}: no 'backend'")
    if meta.get("format") != FORMAT_VERSION:
        raise IndexLoadError(f"{meta_path}: index format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
    return meta


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    (path / META).write_text(json.dumps({"format": FORMAT_VERSION, **meta}, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = True, marker: str = META) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``target``; on success it replaces ``target``.

    On any exception the temp directory is removed and ``target`` is left exactly as it was. An existing
    non-empty ``target`` is only replaced if it holds ``marker`` (an index's ``meta.json``), i.e. was
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
    log.info("replaced index %s", target)

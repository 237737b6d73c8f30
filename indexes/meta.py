"""An index directory's ``meta.json``: which backend wrote it, with what encoder, in which format."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from twostage_search.engine.atomic import versioned_directory
from twostage_search.engine.encoders import SparseEncoder, encoder_from_meta
from twostage_search.engine.errors import IndexLoadError

META = "meta.json"
FORMAT_VERSION = 1


def read_meta(
    path: str | Path, *, backend: str | None = None, files: tuple[str, ...] = (), dirs: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Read and check an index's ``meta.json``: written by ``backend`` (if given), with ``files``/``dirs`` present."""
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
    if backend is not None and meta["backend"] != backend:
        raise IndexLoadError(f"{path} is a {meta['backend']!r} index, not {backend!r}")
    for name in files:
        if not (path / name).is_file():
            raise IndexLoadError(f"incomplete index (no {name}): {path}")
    for name in dirs:
        if not (path / name).is_dir():
            raise IndexLoadError(f"incomplete index (no {name}/): {path}")
    return meta


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    (path / META).write_text(json.dumps({"format": FORMAT_VERSION, **meta}, indent=2, sort_keys=True) + "\n")


def atomic_index(target: str | Path, *, overwrite: bool = True) -> contextlib.AbstractContextManager[Path]:
    """:func:`~twostage_search.engine.atomic.versioned_directory` for an index: replaces only a twostage
    index, as a new version behind the symlink ``target``, so a service serving the old version can
    finish its requests on it and switch with ``POST /admin/reload-index``."""
    return versioned_directory(target, overwrite=overwrite, marker=META)


class BM25IndexMeta:
    """What both BM25 indexes (``lucene-bm25``, ``bm25-csc``) read from their ``meta.json``: the document count
    and the BM25 parameters they score with by default."""

    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.meta["doc_count"])

    @property
    def k1(self) -> float:
        return float(self.meta["bm25"]["k1"])

    @property
    def b(self) -> float:
        return float(self.meta["bm25"]["b"])


class ImpactIndexMeta:
    """What every SPLADE impact index (``lucene-impact``, ``impact-csc``, ``opensearch``) reads from its
    ``meta.json``: the quantisation scale, the document count and the encoder it was built with."""

    meta: dict[str, Any]

    @property
    def scale(self) -> float:
        return float(self.meta["scale"])

    def __len__(self) -> int:
        return int(self.meta["doc_count"])

    def encoder(self) -> SparseEncoder:
        """The encoder this index was built with, re-created from ``meta.json``."""
        return encoder_from_meta(self.meta["encoder"])

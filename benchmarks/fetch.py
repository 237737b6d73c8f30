"""Fetch a standard BEIR dataset into a BEIR-format directory (needs network access).

    twostage fetch-beir scifact --out data/scifact
    python -m twostage_search.benchmarks.fetch nfcorpus --out data/nfcorpus

Two sources: ``ir_datasets`` (when installed: ``pip install ir-datasets``; it caches downloads under
``~/.ir_datasets``) or BEIR's own zip archive, downloaded with the standard library. ``--source auto``
(default) uses ir_datasets when it is importable, else the zip. Either way the files are written to a
temporary directory beside ``--out``, checked with :func:`benchmarks.datasets.load_beir` and only then
renamed into place, so a failed or interrupted fetch leaves nothing behind. Nothing else in twostage
touches the network: benchmarks read the directory this writes.

Licences differ per dataset (SciFact: CC BY-NC 2.0; see the BEIR paper's table): check them before use.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any, Literal

from twostage_search.benchmarks.datasets import available_splits, load_beir
from twostage_search.engine.errors import InputError, MissingDependencyError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"

# BEIR datasets that BEIR's archive (and ir_datasets' "beir/NAME") serve publicly. BioASQ, Signal-1M,
# TREC-NEWS and Robust04 need licences and are not downloadable; CQADupStack is 12 sub-forums.
PUBLIC = (
    "arguana",
    "climate-fever",
    "dbpedia-entity",
    "fever",
    "fiqa",
    "hotpotqa",
    "msmarco",
    "nfcorpus",
    "nq",
    "quora",
    "scidocs",
    "scifact",
    "trec-covid",
    "webis-touche2020",
)
SPLITS = ("train", "dev", "test")

Source = Literal["auto", "zip", "ir_datasets"]


def fetch_beir(
    name: str, out: str | Path, *, source: Source = "auto", url: str | None = None, timeout: float = 60.0
) -> Path:
    """Download BEIR dataset ``name`` into directory ``out`` (created; must not exist or be empty).

    ``url`` overrides the archive location (a mirror, or a local ``file://`` copy). Raises
    :class:`TwoStageError` with one line when the name is unknown, ``out`` is taken, the download fails
    (e.g. no network) or the files are not valid BEIR.
    """
    if name not in PUBLIC:
        raise InputError(f"unknown BEIR dataset {name!r} (public ones: {', '.join(PUBLIC)})")
    if source not in ("auto", "zip", "ir_datasets"):
        raise InputError(f"unknown source {source!r} (auto, zip, ir_datasets)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty directory")
    if source == "auto":
        source = "ir_datasets" if _ir_datasets() is not None and url is None else "zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.fetch-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if source == "ir_datasets":
            _from_ir_datasets(name, tmp)
        else:
            _from_zip(name, url or BEIR_URL.format(name=name), tmp, timeout)
        splits = available_splits(tmp)
        if not splits:
            raise TwoStageError(f"the {name} download has no qrels/*.tsv")
        for split in splits:
            load_beir(tmp, split)  # every split must be valid BEIR before it is put in place
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fetched %s (%s) into %s: splits %s", name, source, out, ", ".join(splits))
    return out


def _ir_datasets() -> Any:
    try:
        import ir_datasets
    except ImportError:
        return None
    return ir_datasets


def _from_zip(name: str, url: str, dest: Path, timeout: float) -> None:
    """Download BEIR's ``NAME.zip`` and extract ``NAME/{corpus,queries}.jsonl`` and ``NAME/qrels/*.tsv``."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        archive = Path(scratch) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, archive.open("wb") as fh:
                shutil.copyfileobj(resp, fh, 1 << 20)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TwoStageError(
                f"cannot download {url}: {reason} (fetch-beir needs network access; offline, put the "
                "BEIR files in a directory by other means and pass it to `twostage bench --dataset`)"
            ) from None
        try:
            with zipfile.ZipFile(archive) as zf:
                _extract(zf, name, dest)
        except zipfile.BadZipFile as exc:
            raise TwoStageError(f"{url} is not a zip archive ({exc})") from None


def _extract(zf: zipfile.ZipFile, name: str, dest: Path) -> None:
    """Copy the BEIR files out of the archive by their names (nothing else, no paths from the archive)."""
    wanted = {"corpus.jsonl": "corpus.jsonl", "queries.jsonl": "queries.jsonl"}
    wanted.update({f"qrels/{s}.tsv": f"qrels/{s}.tsv" for s in SPLITS})
    for info in zf.infolist():
        if info.is_dir():
            continue
        rel = info.filename if info.filename in wanted else info.filename.partition("/")[2]  # NAME/corpus.jsonl
        if rel not in wanted:
            continue
        target = dest / wanted[rel]
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    for required in ("corpus.jsonl", "queries.jsonl"):
        if not (dest / required).is_file():
            raise TwoStageError(f"the {name} archive has no {name}/{required}")


def _from_ir_datasets(name: str, dest: Path) -> None:
    """Write ``beir/NAME`` from ir_datasets as BEIR files (its docs, queries and each split's qrels)."""
    ir_datasets = _ir_datasets()
    if ir_datasets is None:
        raise MissingDependencyError("ir_datasets is not installed: pip install ir-datasets (or use --source zip)")
    try:
        base = ir_datasets.load(f"beir/{name}")
        with (dest / "corpus.jsonl").open("w", encoding="utf-8") as fh:
            for doc in base.docs_iter():
                record = {"_id": doc.doc_id, "title": getattr(doc, "title", "") or "", "text": doc.text}
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        queries: dict[str, str] = {}
        (dest / "qrels").mkdir()
        for split in (None, *SPLITS):
            try:
                ds = base if split is None else ir_datasets.load(f"beir/{name}/{split}")
            except KeyError:
                continue
            if ds.has_queries():
                for q in ds.queries_iter():
                    queries.setdefault(q.query_id, q.text)
            if ds.has_qrels():
                with (dest / "qrels" / f"{split or 'test'}.tsv").open("w", encoding="utf-8") as fh:
                    fh.write("query-id\tcorpus-id\tscore\n")
                    for qrel in ds.qrels_iter():
                        fh.write(f"{qrel.query_id}\t{qrel.doc_id}\t{qrel.relevance}\n")
        with (dest / "queries.jsonl").open("w", encoding="utf-8") as fh:
            for query_id, text in queries.items():
                fh.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    except TwoStageError:
        raise
    except Exception as exc:  # ir_datasets raises many kinds (download errors, missing files)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TwoStageError(f"ir_datasets could not provide beir/{name}: {first}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(1)
    try:
        run(args)
    except TwoStageError as exc:
        print(f"fetch: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help=f"BEIR dataset ({', '.join(PUBLIC)})")
    parser.add_argument("--out", required=True, type=Path, help="directory to create (BEIR files)")
    parser.add_argument("--source", default="auto", choices=("auto", "zip", "ir_datasets"))
    parser.add_argument("--url", default=None, help="archive URL instead of BEIR's (a mirror or file://)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait on the network")


def run(args: argparse.Namespace) -> Path:
    out = fetch_beir(args.name, args.out, source=args.source, url=args.url, timeout=args.timeout)
    splits = available_splits(out)
    print(f"fetched BEIR {args.name} into {out} (splits: {', '.join(splits)}); benchmark it with")
    print(f"  twostage bench --dataset {out} --systems benchmarks/systems/bm25.yaml benchmarks/systems/splade.yaml")
    return out


if __name__ == "__main__":
    sys.exit(main())

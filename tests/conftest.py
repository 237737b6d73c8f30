"""Shared fixtures: the tiny BEIR corpus, the real default SPLADE encoder, a built index per backend."""

from __future__ import annotations

import os

# Tests never reach a model hub; set before transformers is imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import pytest

from engine.beir import read_corpus, read_qrels, read_queries
from engine.types import Document, Query

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny"


@pytest.fixture(scope="session")
def tiny_docs() -> list[Document]:
    return list(read_corpus(TINY / "corpus.jsonl"))


@pytest.fixture(scope="session")
def tiny_queries() -> list[Query]:
    return list(read_queries(TINY / "queries.jsonl"))


@pytest.fixture(scope="session")
def tiny_qrels() -> dict[str, dict[str, int]]:
    return read_qrels(TINY / "qrels" / "test.tsv")


@pytest.fixture(scope="session")
def encoder():
    """The real default SPLADE encoder (weights from the bundled package, loaded offline)."""
    from engine.encoders import create_encoder

    return create_encoder("splade")


@pytest.fixture(scope="session")
def built_indexes(tmp_path_factory, tiny_docs, encoder):
    """One index of the tiny corpus per registered index backend, built once per session."""
    from engine.registry import index_backends

    built = {}
    for name in index_backends.names():
        path = tmp_path_factory.mktemp("idx") / name
        built[name] = index_backends.get(name).build(tiny_docs, path, encoder=encoder, progress=False)
    return built


@pytest.fixture(scope="session")
def lucene_index(built_indexes):
    return built_indexes["lucene-impact"]


@pytest.fixture(scope="session")
def lucene_retriever(lucene_index, encoder):
    return lucene_index.retriever(encoder)

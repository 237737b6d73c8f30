"""Shared fixtures: the tiny BEIR corpus, the real default SPLADE encoder, a built index per backend,
and an OpenSearch to test the ``opensearch`` backend against ($OPENSEARCH_URL, else a real local node)."""

from __future__ import annotations

import os

# Tests never reach a model hub; set before transformers is imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import importlib.abc
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from tests.helpers import NEEDS_NODE, TINY, need, use_osmem
from twostage_search.engine.beir import read_corpus, read_qrels, read_queries
from twostage_search.engine.logs import HANDLER_NAME
from twostage_search.engine.types import Document, Query


class _BareFolderBlocker(importlib.abc.MetaPathFinder):
    """The repository root is on sys.path while tests run, so a bare ``import rerankers`` (or a
    ``find_spec("rerankers")``) would find the folder there and hide a bug that breaks installed use.
    This finder makes those names unimportable in tests, as they are for users."""

    BARE = frozenset({"engine", "indexes", "rerankers", "service", "benchmarks"})

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.BARE:
            raise ModuleNotFoundError(f"bare folder import {name!r}: use twostage_search.{name}", name=name)
        return None


sys.meta_path.insert(0, _BareFolderBlocker())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (every extra installed, every server started) a skipped test is a failure.

    Only tests marked ``external`` (they need something CI does not run, e.g. $OPENSEARCH_URL with
    credentials) may skip there, and OpenSearch tests when the local node did not start: then the one test
    that starts it (test_opensearch_node.py) fails with the reason, instead of every OpenSearch test.
    """
    outcome = yield
    report = outcome.get_result()
    external = item.get_closest_marker("external")
    failed_elsewhere = report.skipped and NEEDS_NODE in str(report.longrepr)  # test_opensearch_node.py fails
    if os.environ.get("CI") and report.skipped and not (external or failed_elsewhere or hasattr(report, "wasxfail")):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be: {report.longrepr}"


@pytest.fixture(autouse=True)
def _restore_logging():
    """An entry point's main() configures the root logger, as it should in its own process; leave the
    next test the logging this one found (no handler of ours, the same levels)."""
    root, opensearch = logging.getLogger(), logging.getLogger("opensearch")
    levels = root.level, opensearch.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(levels[0])
    opensearch.setLevel(levels[1])


@pytest.fixture(scope="session", autouse=True)
def service_data_dir(tmp_path_factory):
    """Services the tests start keep their data (the query and event log) in a temporary directory."""
    path = tmp_path_factory.mktemp("service-data")
    os.environ.setdefault("TWOSTAGE_DATA_DIR", str(path))
    return path


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
    from twostage_search.engine.encoders import create_encoder

    return create_encoder("splade")


# ------------------------------------------------------------------------------------ OpenSearch
def start_osmem() -> tuple[subprocess.Popen, str]:
    """Start osmem-server (PyPI; an in-memory emulator of the OpenSearch REST API) on 127.0.0.1.

    Only with ``TWOSTAGE_TEST_OPENSEARCH=osmem`` (a fast local loop): it is not OpenSearch, and the
    default is a real node. The server picks a free port itself and prints its URL as the first line;
    it exits with this process (``--parent-pid``).
    """
    from osmem_server import resolve_binary

    cmd = [resolve_binary(), "--addr", "127.0.0.1:0", "--no-ja", "--no-stdin-watch", "--parent-pid", str(os.getpid())]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        stop_osmem(proc)
        raise RuntimeError(f"osmem-server exited at start-up ({' '.join(cmd)})")
    url = json.loads(line)["url"]
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_osmem(proc)
                raise RuntimeError("osmem-server did not start") from None
            time.sleep(0.05)


def stop_osmem(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


def _opensearch_available() -> bool:
    if importlib.util.find_spec("opensearchpy") is None or importlib.util.find_spec("pydantic_settings") is None:
        return False
    if os.environ.get("OPENSEARCH_URL"):
        return True
    if use_osmem():
        return importlib.util.find_spec("osmem_server") is not None
    return shutil.which("mvn") is not None  # a real node is fetched from Maven Central


@pytest.fixture(scope="session")
def opensearch_node(tmp_path_factory):
    """A real single OpenSearch node started here (indexes/opensearch/local.py; fetched once from Maven Central),
    or the error that kept it from starting: only ``test_opensearch_node.py`` reports that error; every other
    OpenSearch test then skips with a pointer to it (see :func:`opensearch_url`)."""
    from twostage_search.indexes.opensearch.local import KNN_PLUGIN, LocalCluster, LocalOpenSearchError

    try:
        node = LocalCluster.start(1, workdir=tmp_path_factory.mktemp("opensearch-node"), plugins=(KNN_PLUGIN,))
    except (LocalOpenSearchError, OSError) as exc:
        yield exc
        return
    with node:
        yield node


@pytest.fixture(scope="session")
def opensearch_url(request):
    """The cluster the OpenSearch tests use: $OPENSEARCH_URL when set, else a real local node."""
    if not _opensearch_available():
        reason = "opensearch-py, pydantic-settings or mvn missing: pip install -e '.[opensearch,test]'"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the OpenSearch tests)")
        pytest.skip(reason)
    url = os.environ.get("OPENSEARCH_URL")
    if url:
        yield url
        return
    if use_osmem():
        proc, url = start_osmem()
        try:
            yield url
        finally:
            stop_osmem(proc)
        return
    node = request.getfixturevalue("opensearch_node")
    if isinstance(node, Exception):
        pytest.skip(f"{NEEDS_NODE} OpenSearch did not start: tests/test_opensearch_node.py reports why")
    yield node.url


@pytest.fixture(scope="session")
def opensearch_prefix(opensearch_url):
    """A per-session prefix for index names; on an external cluster the session's indices are deleted after."""
    prefix = f"twostage-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    if os.environ.get("OPENSEARCH_URL"):
        from twostage_search.indexes.opensearch.client import make_client, resolve_settings

        client = make_client(resolve_settings(hosts=[opensearch_url]))
        for name in client.indices.get(index=f"{prefix}*"):
            client.indices.delete(index=name)


@pytest.fixture
def name(opensearch_prefix, request):
    """A fresh OpenSearch alias name for this test, under the session prefix."""
    counter = iter(range(100))

    def make(suffix: str = "") -> str:
        test = request.node.name.split("[")[0].replace("test_", "").replace("_", "-")[:40]
        return f"{opensearch_prefix}-{test}{suffix}-{next(counter)}"

    return make


@pytest.fixture(scope="session")
def os_index(tmp_path_factory, tiny_docs, encoder, opensearch_url, opensearch_prefix):
    """The tiny corpus on the OpenSearch backend, built once per session."""
    from twostage_search.engine.registry import index_backends

    path = tmp_path_factory.mktemp("idx") / "opensearch"
    options = {"hosts": [opensearch_url], "index_name": f"{opensearch_prefix}-contract"}
    return index_backends.get("opensearch").build(tiny_docs, path, encoder=encoder, progress=False, **options)


@pytest.fixture(scope="session")
def knn_index(tmp_path_factory, tiny_docs, opensearch_url, opensearch_prefix):
    """The tiny corpus on the ``opensearch-knn`` backend (bge-small vectors, Lucene HNSW), built once per session."""
    from twostage_search.engine.registry import index_backends

    if use_osmem():
        pytest.skip("the osmem emulator has no k-NN plugin")
    path = tmp_path_factory.mktemp("idx") / "opensearch-knn"
    options = {"hosts": [opensearch_url], "index_name": f"{opensearch_prefix}-knn-contract"}
    return index_backends.get("opensearch-knn").build(tiny_docs, path, progress=False, **options)


@pytest.fixture(scope="session")
def built_indexes(tmp_path_factory, tiny_docs, encoder):
    """One index of the tiny corpus per embedded index backend (no server), built once per session.

    The OpenSearch backends are :func:`os_index` and :func:`knn_index`: tests that do not need a cluster do
    not wait for one.
    """
    from twostage_search.engine.registry import index_backends

    built = {}
    for name in index_backends.names():
        if not name.startswith("opensearch"):
            path = tmp_path_factory.mktemp("idx") / name
            built[name] = index_backends.get(name).build(tiny_docs, path, encoder=encoder, progress=False)
    return built


@pytest.fixture(scope="session")
def lucene_index(built_indexes):
    return built_indexes["lucene-impact"]


@pytest.fixture(scope="session")
def lucene_retriever(lucene_index, encoder):
    return lucene_index.retriever(encoder)


# ------------------------------------------------------------------------------------ LLM rerankers
@pytest.fixture(scope="session")
def llm():
    """The real bundled instruction model (Qwen2.5-Coder-0.5B-Instruct GGUF) through llama.cpp, loaded once."""
    need("llama_cpp", "llm")
    from twostage_search.rerankers.llm.backends import create_backend

    return create_backend("llama-cpp", threads=2)

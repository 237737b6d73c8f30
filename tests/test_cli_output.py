"""What a user's terminal gets from ``twostage`` run as a real process: nothing but the answer.

The embedded Lucene index runs in a JVM inside the process; neither the JVM nor Lucene may write notices
(Java 22+ MMapDirectory, vector incubator module, ``sun.misc.Unsafe``) to stdout or stderr, so that
``twostage search --json … | jq .`` works as is.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import need

need("jnius_config", "lucene")  # (importing jnius itself would start a JVM without Anserini)

TWOSTAGE = Path(sys.executable).with_name("twostage")
pytestmark = pytest.mark.slow


def _twostage(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("JAVA_HOME", None)
    return subprocess.run([str(TWOSTAGE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("backend", ["lucene-impact", "lucene-bm25", "hybrid"])
def test_search_json_is_all_there_is(backend, built_indexes, tmp_path):
    path = built_indexes[backend].path
    done = _twostage("search", "--json", "--index", str(path), "--k", "3", "young cat", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    payload = json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert payload["query"] == "young cat" and 1 <= len(payload["hits"]) <= 3


def test_index_prints_one_line_and_no_jvm_notice(tmp_path):
    from tests.helpers import TINY

    done = _twostage(
        "index", str(TINY / "corpus.jsonl"), "--index", "idx", "--backend", "lucene-bm25", "--no-progress", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("indexed ") and done.stdout.count("\n") == 1

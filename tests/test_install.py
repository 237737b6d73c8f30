"""The distribution as a user gets it: one namespace in the wheel, and the CLI on the base dependencies.

Builds the wheel, checks its top level, installs it into a fresh virtual environment with only the base
dependencies (no extras) and runs the command line there, outside the checkout.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from twostage_search.engine.retry import backoff_delay

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _pip(python: str | Path, *args: str, cwd: Path, attempts: int = 3) -> subprocess.CompletedProcess[str]:
    """``python -m pip ARGS``, retried (a registry can fail once); the last attempt's own output on failure."""
    cmd = [str(python), "-m", "pip", *args, "--disable-pip-version-check"]
    for attempt in range(1, attempts + 1):
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
        if done.returncode == 0:
            return done
        if attempt < attempts:
            time.sleep(backoff_delay(attempt, base=5.0, cap=30.0))
    pytest.fail(f"`{' '.join(cmd)}` failed {attempts} times (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory) -> tuple[Path, str]:
    """The wheel, and everything its build printed."""
    out = tmp_path_factory.mktemp("wheel")
    done = _pip(sys.executable, "wheel", "--no-deps", "-v", "-w", str(out), str(ROOT), cwd=out)
    (built,) = out.glob("twostage_search-*.whl")
    return built, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(wheel_build) -> Path:
    return wheel_build[0]


def test_build_prints_no_setuptools_warning(wheel_build):
    """Data folders (bundled models, experiments, SciFact) are declared, so setuptools has nothing to warn about."""
    _, output = wheel_build
    for warning in ("Package would be ignored", "is absent from the `packages` configuration", "SetuptoolsWarning"):
        assert warning not in output


def test_wheel_carries_the_package_data(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for data in (
        "service/experiments/default.yaml",
        "benchmarks/data/scifact/corpus.jsonl.gz",
        "benchmarks/data/scifact/qrels/test.tsv",
        "benchmarks/systems/bm25.yaml",
        "rerankers/models/ce-minilm-l6-scifact/model.safetensors",
        "rerankers/models/graded-crowdflower/model.json",
        "rerankers/models/graded-stacked-crowdflower/model.json",
        "rerankers/models/graded-ce-text-crowdflower/delta.safetensors",
        "benchmarks/data/splits/crowdflower-search-relevance.tsv",
        "indexes/lucene-logging.properties",
        "service/templates/judge.html",
        "service/templates/judge.js",
        "service/templates/judge.css",
    ):
        assert f"twostage_search/{data}" in names, data


def test_wheel_holds_only_the_namespace(wheel):
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
        names = set(zf.namelist())
    assert top == {"twostage_search", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert "twostage_search/__init__.py" not in names  # an implicit namespace package
    for package in ("cli.py", "engine/__init__.py", "indexes/__init__.py", "rerankers/llm/__init__.py"):
        assert f"twostage_search/{package}" in names


@pytest.fixture(scope="module")
def base_env(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel and its base dependencies only (numpy, tqdm, rich, cachetools, platformdirs)."""
    env = tmp_path_factory.mktemp("base-venv")
    venv.create(env, with_pip=True)
    _pip(env / "bin" / "python", "install", "-q", str(wheel), cwd=env)
    return env


def _run(env: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=120, env={"PATH": str(env / "bin")}
    )


def test_cli_works_on_the_base_dependencies(base_env, tmp_path):
    assert _run(base_env, "twostage", "--help", cwd=tmp_path).returncode == 0
    for command in ("index", "search", "bench", "serve", "serve-llm"):
        shown = _run(base_env, "twostage", command, "--help", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
    # A subcommand whose extra is missing says which one to install, in one line, exit 1 (not bad usage).
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "a cat"}\n')
    done = _run(base_env, "twostage", "index", "corpus.jsonl", "--index", "idx", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "pip install 'twostage-search[" in done.stderr, done.stderr


def test_no_bare_top_level_packages_installed(base_env, tmp_path):
    python = str(base_env / "bin" / "python")
    for bare in ("engine", "indexes", "rerankers", "service", "benchmarks"):
        assert _run(base_env, python, "-c", f"import {bare}", cwd=tmp_path).returncode != 0, bare
    code = "import twostage_search.engine, twostage_search.cli; print(twostage_search.engine.__version__)"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _run(base_env, python, "-c", code, cwd=tmp_path).stdout.strip() == declared
    assert _run(base_env, "twostage", "--version", cwd=tmp_path).stdout.strip() == f"twostage {declared}"

"""The distribution as a user gets it: one namespace in the wheel, and the CLI on the base dependencies.

Builds the wheel, checks its top level, installs it into a fresh virtual environment with only the base
dependencies (no extras) and runs the command line there, outside the checkout.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
    subprocess.run(cmd, check=True, cwd=out, capture_output=True, timeout=600)
    (built,) = out.glob("twostage_search-*.whl")
    return built


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
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=900)
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

"""Bundled GGUF models: parts joined in order, checked against the pinned SHA-256, atomically; extras list the parts."""

from __future__ import annotations

import hashlib
import re
import sys
import tomllib
from pathlib import Path

import pytest

from twostage_search.engine.errors import MissingDependencyError, TwoStageError
from twostage_search.engine.models import cache_dir
from twostage_search.rerankers.llm import gguf

ROOT = Path(__file__).resolve().parent.parent
PARTS = (b"GGUF-head:", b"middle-bytes:", b"tail")


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """Three importable packages ``fakepart{1,2,3}`` each holding ``data/partNN.bin``."""
    site = tmp_path / "site"
    for i, payload in enumerate(PARTS, start=1):
        pkg = site / f"fakepart{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('the part packages must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(payload)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TWOSTAGE_CACHE_DIR", str(tmp_path / "cache"))
    return tuple(f"fakepart{i}" for i in range(1, len(PARTS) + 1))


def _register(monkeypatch: pytest.MonkeyPatch, packages: tuple[str, ...], sha256: str) -> None:
    model = gguf.BundledGGUF(packages, sha256, sum(map(len, PARTS)), "llm", "test parts", "none")
    monkeypatch.setitem(gguf.BUNDLED_GGUF, "fake", model)


def test_parts_are_joined_in_order_and_reused(fake_parts: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    whole = b"".join(PARTS)
    _register(monkeypatch, fake_parts, hashlib.sha256(whole).hexdigest())
    path = Path(gguf.resolve_gguf("bundled:fake"))
    assert path.read_bytes() == whole
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert not any(name in sys.modules for name in fake_parts)  # located, never imported
    assert gguf.resolve_gguf("bundled:fake") == str(path)


def test_wrong_checksum_fails_and_writes_nothing(fake_parts: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, fake_parts, "0" * 64)
    with pytest.raises(TwoStageError, match="SHA-256"):
        gguf.resolve_gguf("bundled:fake")
    assert not any((cache_dir() / "models").iterdir())


def test_missing_part_package_names_the_extra(fake_parts: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, (*fake_parts, "fakepart_absent"), "0" * 64)
    with pytest.raises(MissingDependencyError, match=r"twostage-search\[llm\]"):
        gguf.resolve_gguf("bundled:fake")


def _extra_requirements(extras: dict[str, list[str]], name: str) -> set[str]:
    """Distribution names an extra installs, following ``twostage-search[other]`` references."""
    out: set[str] = set()
    for req in extras[name]:
        nested = re.fullmatch(r"twostage-search\[(.+)\]", req)
        if nested:
            for other in nested.group(1).split(","):
                out |= _extra_requirements(extras, other.strip())
        else:
            out.add(re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower().replace("_", "-"))
    return out


@pytest.mark.parametrize("name", sorted(gguf.BUNDLED_GGUF))
def test_each_bundled_llm_extra_installs_all_its_parts(name: str) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    model = gguf.BUNDLED_GGUF[name]
    wanted = {package.replace("_", "-") for package in model.packages}
    assert wanted <= _extra_requirements(extras, model.extra)
    assert len(model.sha256) == 64 and model.size > 0


@pytest.mark.skipif(sys.platform != "linux", reason="XDG_CACHE_HOME is the Linux convention")
def test_cache_follows_xdg_cache_home_unless_overridden(
    fake_parts: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWOSTAGE_CACHE_DIR")  # set by fake_parts
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "twostage"
    whole = b"".join(PARTS)
    _register(monkeypatch, fake_parts, hashlib.sha256(whole).hexdigest())
    assert Path(gguf.resolve_gguf("bundled:fake")).parent == tmp_path / "xdg" / "twostage" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "twostage"  # the XDG default
    monkeypatch.setenv("TWOSTAGE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"

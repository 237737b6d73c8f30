"""The import graph, computed from the source with ``ast``: one namespace, layers that point one way.

Layers, lowest first: ``engine`` < ``indexes``, ``rerankers`` < ``service``, ``benchmarks`` < ``cli``.
A module may import its own package and lower layers only; packages of one layer do not import each
other; nothing imports another package's private module (a ``_name`` segment); the graph has no cycle;
no source file (tests included) is over 450 lines; nothing imports the bare folder names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NS = "twostage_search"
LAYER = {"engine": 0, "indexes": 1, "rerankers": 1, "service": 2, "benchmarks": 2, "cli": 3}
FOLDERS = ("engine", "indexes", "rerankers", "service", "benchmarks")
MAX_LINES = 450


def _source_files() -> dict[str, Path]:
    """Module name → file, for every module the wheel installs."""
    modules = {f"{NS}.cli": ROOT / "cli.py"}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([NS, *parts])] = path
    return modules


MODULES = _source_files()


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Absolute names imported by ``module`` (relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.append((base, node.lineno))
            found += [
                (f"{base}.{alias.name}", node.lineno) for alias in node.names if f"{base}.{alias.name}" in MODULES
            ]
    return found


def _top(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == NS and len(parts) > 1 else None


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_no_bare_folder_imports():
    bad = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {name}"
        for m, names in GRAPH.items()
        for name, line in names
        if name.split(".")[0] in FOLDERS
    ]
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for name, line in _imports("tests.x", path):
            if name.split(".")[0] in FOLDERS:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_layers_point_one_way():
    bad = []
    for module, names in GRAPH.items():
        own = _top(module)
        assert own is not None
        for name, line in names:
            other = _top(name)
            if other is None or other == own or other not in LAYER:
                continue
            if LAYER[other] >= LAYER[own]:
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {own} (layer {LAYER[own]}) imports {name}")
    assert not bad, "\n".join(bad)


STUDIES = f"{NS}.benchmarks.studies"


def test_benchmark_library_does_not_import_studies():
    """benchmarks/ is the library its studies build on; no library module reaches into benchmarks/studies/."""
    bad = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {name}"
        for m, names in GRAPH.items()
        if m.startswith(f"{NS}.benchmarks.") and not m.startswith(STUDIES)
        for name, line in names
        if name == STUDIES or name.startswith(f"{STUDIES}.")
    ]
    assert any(m.startswith(f"{STUDIES}.") for m in MODULES), "no study modules found: the rule would be vacuous"
    assert not bad, "\n".join(bad)


def test_no_private_module_of_another_package():
    bad = []
    for module, names in GRAPH.items():
        for name, line in names:
            other = _top(name)
            if other is None or other == _top(module):
                continue
            if any(part.startswith("_") and not part.startswith("__") for part in name.split(".")[2:]):
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports private {name}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    edges = {m: {n for n, _ in names if n in MODULES and n != m} for m, names in GRAPH.items()}
    # A package's __init__ importing its own submodules is not a cycle worth reporting; anything else is.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


SOURCES = sorted([*MODULES.values(), *(ROOT / "tests").glob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_file_size(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_the_layer_rule_itself_can_fail(tmp_path):
    """The checker sees an upward import (engine → service) and a cycle in a hand-made graph."""
    path = tmp_path / "mod.py"
    path.write_text("from twostage_search.service.app import create_app\nfrom . import types\n")
    names = [n for n, _ in _imports(f"{NS}.engine.mod", path)]
    assert f"{NS}.service.app" in names and f"{NS}.engine.types" in names
    assert LAYER[_top(f"{NS}.service.app") or ""] > LAYER["engine"]

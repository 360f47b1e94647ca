"""Module boundaries of the package: no module imports a private name of another, imports never
form a cycle (imports inside functions and under TYPE_CHECKING count too), the run reads as one
page, and modules stay small unless one concern needs the room."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "imbalance"
MODULES = {p.stem: p for p in PKG.glob("*.py")}
#: Modules allowed over 600 lines, each one concern that needs the room (README "Layout").
LARGE = {
    "losses": "every loss of the registry, each with its formula and checks",
    "visualization": "every figure of a run, one function each",
    "summary": "the comparison tables, the report and its figure",
}


def _imports(path: Path):
    """(imported module of the package, names taken from it) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0 and not mod.startswith("imbalance"):
                continue
            parts = mod.split(".") if node.level else mod.split(".")[1:]
            if parts and parts[0]:
                yield parts[0], [a.name for a in node.names]
            else:  # from . import x, y
                for a in node.names:
                    yield a.name, []
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("imbalance."):
                    yield a.name.split(".")[1], []


def _graph():
    return {name: {m for m, _ in _imports(p) if m in MODULES and m != name} for name, p in MODULES.items()}


def test_no_module_imports_a_private_name_of_another():
    private = [f"{name}: {mod}.{n}" for name, p in MODULES.items() for mod, names in _imports(p)
               if mod in MODULES and mod != name for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_no_private_attribute_of_an_imported_module_is_used():
    bad = []
    for name, p in MODULES.items():
        tree = ast.parse(p.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and not node.module:
                aliases.update({a.asname or a.name: a.name for a in node.names if a.name in MODULES})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{name}: {node.value.id}.{node.attr}")
    assert bad == []


def test_imports_form_no_cycle():
    graph = _graph()
    state, cycles = {}, []

    def visit(u, stack):
        state[u] = 1
        for v in graph[u]:
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack + [v])
        state[u] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_run_reads_as_one_page_and_modules_stay_small():
    assert len((PKG / "pipeline.py").read_text().splitlines()) <= 300
    big = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in big.items() if n > 650 and m not in LARGE} == {}


def test_the_shared_boundary_check_passes_if_present():
    import subprocess
    import sys

    tool = ROOT.parent / "shared" / "tools" / "check_imports.py"
    if not tool.is_file():  # outside this workplace the own checks above are the contract
        return
    p = subprocess.run([sys.executable, str(tool)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout

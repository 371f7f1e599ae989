"""The package structure DESIGN.md promises, checked on the source: no import cycle anywhere in
study, trainables and analysis, and dependencies that point one way.

The graph is built with `ast` from every import statement in every file (module level, inside
functions and under `if TYPE_CHECKING:` alike): a cycle that only a lazy import hides is still
two modules that cannot be read, changed or tested one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("study", "trainables", "analysis")


def module_name(path: Path) -> str:
    """`study/run/tuner.py` -> `study.run.tuner`; `analysis/measure/__init__.py` ->
    `analysis.measure`."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules of the three packages that the file at `path` imports, by any statement."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the three packages it imports."""
    modules = all_modules()
    known = set(modules)
    return {name: imported(path, name, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "study.config" in graph["study.presets"]  # at module level
    assert "study.run.driver" in graph["study.commands.studies"]  # inside a function
    assert "study.run.state" in graph["study.run.progress"]  # under `if TYPE_CHECKING:`
    assert "analysis.contract" in graph["trainables.config"]  # across packages
    assert len(graph) > 40


def test_no_import_cycle_in_study_trainables_analysis() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(("package", "forbidden"), [
    ("analysis", ("study", "trainables")),
    ("trainables", ("study",)),
    ("analysis.measure", ("analysis.crosstrial",)),
])
def test_dependencies_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    graph = import_graph()
    wrong = sorted(f"{mod} imports {dep}" for mod, deps in graph.items()
                   if mod == package or mod.startswith(package + ".")
                   for dep in deps if any(dep == f or dep.startswith(f + ".") for f in forbidden))
    assert wrong == []

"""The house rules a reader relies on: a docstring on every public function and class, and
focused files (under 400 lines) in the three packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainables", "analysis")
MAX_LINES = 400


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def undocumented(path: Path, root: Path = ROOT) -> list[str]:
    """`file:line name` of each public def or class (methods of public classes included)
    without a docstring."""
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if child.name.startswith("_"):
                continue
            if ast.get_docstring(child) is None:
                found.append(f"{path.relative_to(root)}:{child.lineno} {prefix}{child.name}")
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def test_the_rule_sees_a_missing_docstring(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text('def f():\n    """Doc."""\n\n\nclass C:\n    def g(self):\n        pass\n'
                      "\n    def _h(self):\n        pass\n")
    assert undocumented(sample, tmp_path) == ["m.py:5 C", "m.py:6 C.g"]


def test_every_public_function_and_class_has_a_docstring() -> None:
    missing = [item for path in source_files() for item in undocumented(path)]
    assert not missing, "public and undocumented:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_focused(path: Path) -> None:
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it"

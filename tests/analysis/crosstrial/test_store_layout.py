"""The store's layout has one owner (analysis.crosstrial.store): no other module spells an
`nctune.*` tag or builds `<root>/studies/...` itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analysis.crosstrial import store

ROOT = Path(__file__).resolve().parents[3]
OWNER = ROOT / "analysis" / "crosstrial" / "store.py"
SOURCES = sorted(p for pkg in ("study", "trainables", "analysis")
                 for p in (ROOT / pkg).rglob("*.py") if p != OWNER)
TAG = re.compile(r"""["']nctune\.[a-z_]+""")  # prose names a tag between backquotes
STUDIES = re.compile(r"""["']studies["']|["']study\.json["']""")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_but_the_store_spells_a_tag_or_a_study_path(path):
    code = [line for line in path.read_text().splitlines()
            if not line.lstrip().startswith("#")]
    text = "\n".join(code)
    assert not TAG.search(text), f"{path}: spell tags as store.TAG_*"
    assert not STUDIES.search(text), f"{path}: build study paths with store.study_dir/report_dir"


def test_paths_under_the_root(tmp_path):
    assert store.study_dir(tmp_path, "demo") == tmp_path.resolve() / "studies" / "demo"
    assert store.report_dir(tmp_path, "demo") == tmp_path.resolve() / "studies/demo/report"
    assert store.report_dir(tmp_path, "demo", "digits").name == "probe-digits"


def test_log_to_parent_reports_a_failure_in_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    error = store.log_to_parent(uri, "no-such-run", {"m": 1.0}, tmp_path, "analysis")
    assert error.startswith("could not log the report to MLflow run no-such-run")
    assert "\n" not in error

"""The README's notebook example, run as written on a real three-trial study."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pandas as pd
import pytest

import analysis
from study.run.driver import run_study
from tests.study.studies import tiny_study

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The python block under the README's 'In a notebook' heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### In a notebook: the Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section lost its example"
    return match.group(1)


def test_readme_example_runs_on_a_real_study(tmp_path, local_ray, monkeypatch):
    state = run_study(tiny_study(tmp_path, name="demo"), report=False)
    assert state.status == "completed"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", state.tracking_uri)
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    study, corr, board = namespace["study"], namespace["corr"], namespace["board"]
    assert len(study.trials) == 3 and len(study.usable) == 3  # type: ignore[attr-defined]
    assert isinstance(corr, pd.DataFrame) and isinstance(board, pd.DataFrame)
    assert {"spearman", "partial_spearman"} <= set(corr["method"])
    spearman = corr[(corr["method"] == "spearman") & (corr["collapse"] == "cdnv/target")
                    & (corr["transfer"] == "fewshot/5w5s/ncc/acc")]
    assert len(spearman) == 1 and -1 <= spearman["estimate"].iloc[0] <= 1
    assert "cdnv/target" in out.getvalue()
    # the lazy exports are the API module's functions, documented
    for name in ("load_study", "correlations", "leaderboard", "analyze"):
        assert getattr(analysis, name).__doc__


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = analysis.nope  # type: ignore[attr-defined]

"""analysis.crosstrial.verdict: every combination of the decision table gives exactly one sentence,
each row is reachable and says what it must, and the README prints the table the code uses."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from analysis.crosstrial import verdict
from analysis.crosstrial.report import partial_sentence

README = Path(__file__).resolve().parents[3] / "README.md"
NAN = float("nan")


def _est(estimate: float, lo: float, hi: float, p: float, reason: str = "") -> SimpleNamespace:
    return SimpleNamespace(estimate=estimate, ci_low=lo, ci_high=hi, p_value=p, reason=reason)


HEAD = _est(-0.90, -0.96, -0.74, 0.0001)
NONE = _est(-0.10, -0.50, 0.40, 0.60)


def test_every_combination_matches_exactly_one_row() -> None:
    used = set()
    for combo in verdict.combinations():
        rows = verdict.match(*combo)
        assert len(rows) == 1, combo
        used.add(rows[0])
    assert used == set(verdict.ROWS)  # no row is dead


@pytest.mark.parametrize(("head", "partial", "expected", "absent"), [
    (HEAD, _est(-0.70, -0.90, -0.30, 0.01), "holds at equal source accuracy too", "keeps"),
    (HEAD, _est(0.60, 0.20, 0.85, 0.02), "Sign reversal: at equal source accuracy the "
     "association runs the other way (partial 0.60 [0.20, 0.85], p = 0.02", "keeps"),
    (HEAD, _est(-0.60, -0.90, 0.10, 0.09), "keeps 67% of its size but its interval covers 0",
     "Sign"),
    (HEAD, _est(-0.10, -0.60, 0.40, 0.70), "Source accuracy accounts for most of it", "keeps"),
    (HEAD, _est(0.50, -0.10, 0.80, 0.09), "Sign flip: at equal source accuracy the point "
     "estimate has the opposite sign", "keeps"),
    (NONE, _est(-0.70, -0.90, -0.30, 0.01), "an association appears (partial −0.70", "keeps"),
    (NONE, NONE, "no clear association either", "keeps"),
    (HEAD, _est(-0.16, -0.87, -0.10, 0.55), "the interval and the test disagree", "keeps"),
    (NONE, _est(-0.16, -0.40, 0.10, 0.01), "the interval and the test disagree", "keeps"),
    (HEAD, _est(-0.16, NAN, NAN, NAN, "these trials cannot separate the two explanations"),
     "No partial correlation: these trials cannot separate", "partial −0.16"),
])
def test_each_row_says_what_it_must(head, partial, expected, absent) -> None:
    text = partial_sentence(head, partial) or ""
    assert expected in text and absent not in text


def test_a_reversal_is_never_described_as_a_share_of_the_size() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        r, lo, hi = np.sort(rng.uniform(-1, 1, 3))[[1, 0, 2]]
        p = rng.uniform(0, 0.2)
        text = partial_sentence(HEAD, _est(r, lo, hi, p)) or ""
        assert text.count(".") >= 1
        if r > 0:  # opposite sign to the headline
            assert "keeps" not in text and ("Sign" in text or "disagree" in text
                                            or "appears" in text), text


def test_readme_prints_the_decision_table_the_code_uses() -> None:
    text = README.read_text(encoding="utf-8")
    assert "## How the verdict is decided" in text
    assert verdict.markdown_table() in text

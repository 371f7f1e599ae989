"""The intervention section from a trials table with a known answer: levels, tables, figure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import contract as names
from analysis.crosstrial.intervention_report import intervention_section, level_label


def _final(beta: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for fe, cl, shift in [(0.5, 0.0, 0.3), (0.0, 0.0, 0.0), (0.0, 0.05, -0.3), (0.0, 0.5, -0.8)]:
        for s in range(3):
            logx = shift + 0.05 * rng.standard_normal()
            rows.append({"feature_entropy": fe, "center_loss": cl, "seed": s,
                         names.CDNV_TARGET: 10 ** logx,
                         names.collapse_key("cdnv", names.SOURCE_TRAIN): 10 ** (logx - 0.5),
                         names.SOURCE_TEST_ACC: 0.9 + 0.005 * rng.standard_normal(),
                         names.DEFAULT_SEARCH_METRIC: 0.8 + beta * logx
                         + 0.005 * rng.standard_normal()})
    return pd.DataFrame(rows)


def test_levels_are_named_by_the_controls_that_are_on():
    row = pd.Series({"feature_entropy": 0.0, "center_loss": 0.5, "etf_head": False})
    assert level_label(row, ["feature_entropy", "center_loss", "etf_head"]) == "center_loss=0.5"
    row = pd.Series({"feature_entropy": 0.0, "center_loss": 0.0})
    assert level_label(row, ["feature_entropy", "center_loss"]) == "no control"


def test_a_known_effect_gives_the_claim_the_tables_and_the_figure(tmp_path):
    sec = intervention_section(_final(beta=-0.1), ["feature_entropy", "center_loss", "seed"],
                               tmp_path)
    assert sec is not None
    assert sec["lines"][0].startswith("Moving collapse moved transfer")
    assert abs(float(sec["result"].beta[0]) + 0.1) < 0.02
    eff = sec["effects"]
    big = eff[(eff["measure"] == "log10 target CDNV") & (eff["level"] == "center_loss=0.5")]
    assert float(big["change vs no control"].iloc[0]) < -0.6
    assert (tmp_path / "intervention.png").exists()
    assert any("assumes" in line for line in sec["lines"])


def test_no_effect_is_not_claimed_and_a_study_without_controls_has_no_section(tmp_path):
    sec = intervention_section(_final(beta=0.0, seed=1), ["feature_entropy", "center_loss"],
                               None)
    assert sec is not None and not sec["lines"][0].startswith("Moving collapse moved")
    assert intervention_section(_final(0.0), ["weight_decay"], None) is None

"""The probe's cross-domain analysis on frames whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import contract
from analysis.crosstrial.probe_report import correlation_rows, pick, side_by_side, verdict

PROBE = "digits"
Y_PROBE = contract.probe_key(PROBE, contract.DEFAULT_SEARCH_METRIC)


def frame(n: int = 8, seed: int = 0) -> pd.DataFrame:
    """Trials where source-train CDNV ranks probe accuracy perfectly (lower CDNV, higher
    accuracy) and in-domain accuracy not at all (a random order)."""
    rng = np.random.default_rng(seed)
    cdnv = np.linspace(0.2, 1.0, n)
    return pd.DataFrame({
        "trial_index": np.arange(n), "run_name": [f"t{i:03d} wd=1" for i in range(n)],
        "epoch": 3, "cdnv/source_train": cdnv, "cdnv/source_test": cdnv * 1.1,
        "cdnv/target": rng.permutation(cdnv), "source/test_acc": rng.uniform(0.3, 0.9, n),
        contract.DEFAULT_SEARCH_METRIC: rng.permutation(np.linspace(0.4, 0.8, n)),
        Y_PROBE: 0.9 - 0.5 * cdnv,
        contract.probe_key(PROBE, "cdnv/target"): 2 * cdnv,
        contract.probe_key(PROBE, "transfer/knn/target"): 1 - cdnv ** 2,
    })


def test_a_perfect_cross_domain_ranking_is_said_with_its_interval():
    f = frame()
    table = correlation_rows(f, PROBE, n_boot=500, seed=0)
    away = pick(table, "probe", "cdnv/source_train")
    # a perfect ranking: the Fisher-z interval collapses onto ±1 (as the bootstrap did)
    assert away.estimate == -1.0 and away.ci_low == -1.0 and away.ci_high == pytest.approx(-1.0)
    assert pick(table, "probe", contract.probe_key(PROBE, "transfer/knn/target")).estimate == 1.0
    home = pick(table, "in-domain", "cdnv/source_train")
    assert abs(home.estimate) < 1 and home.ci_low < home.estimate < home.ci_high
    assert pick(table, "probe", "source/test_acc", "partial_spearman") is None  # not vs itself
    lines = verdict(f, table, PROBE, zoo=False)
    assert lines[1].startswith("Collapse on the source classes (source-train CDNV) predicted "
                               "transfer to 'digits': Spearman with 5-way 5-shot NCC accuracy "
                               "on 'digits' −1.00 [−1.00, −1.00]")
    assert "in-domain it was" in lines[1]
    wide = side_by_side(table, PROBE).set_index("predictor")
    assert {"in-domain: Spearman", "probe: Spearman"} <= set(wide.columns)
    # CDNV on each domain's own target shares one row
    assert wide.loc["cdnv/target", "probe: Spearman"].startswith("−1.00")
    assert wide.loc["cdnv/target", "in-domain: Spearman"] != ""


def test_no_association_is_not_called_a_prediction():
    f = frame(12, seed=3)
    f[Y_PROBE] = np.random.default_rng(7).permutation(f[Y_PROBE].to_numpy())
    table = correlation_rows(f, PROBE, n_boot=500, seed=0)
    lines = verdict(f, table, PROBE, zoo=False)
    away = pick(table, "probe", "cdnv/source_train")
    assert away.ci_low < 0 < away.ci_high
    assert "did not clearly predict transfer to 'digits'" in lines[1]


def test_the_html_report_has_the_study_reports_look(new_store, tmp_path):
    """Written end to end from a real MLflow store: the study report's template (its style,
    verdict box and figure convention), the wide table scrolls inside the page."""
    from analysis.crosstrial.probe_report import analyze_probe
    from tests.analysis.conftest import synth_trial, write_study

    uri = new_store()
    rng = np.random.default_rng(0)
    trials = []
    for i, cdnv in enumerate(np.linspace(0.2, 1.0, 8)):
        t = synth_trial({"weight_decay": 10.0 ** -(i + 1)}, cdnv_final=float(cdnv),
                        acc_final=float(0.9 - 0.3 * cdnv), rng=rng)
        last = max(t.metrics["fewshot/5w5s/ncc/acc"])
        t.metrics[Y_PROBE] = {last: float(0.8 - 0.4 * cdnv)}
        t.metrics[contract.probe_key(PROBE, "cdnv/target")] = {last: float(2 * cdnv)}
        trials.append(t)
    write_study(uri, "s", trials, searched=["weight_decay"])
    report = analyze_probe("s", PROBE, uri, tmp_path / "out", n_boot=200, log_to_mlflow=False)
    html = report.path.read_text()
    assert 'class="verdict"' in html and "overflow-x: auto" in html
    assert "Probe <code>digits</code> of study <code>s</code>" in html
    assert html.count("data:image/png;base64,") == 1 and "figures/probe.svg" in html
    assert (tmp_path / "out" / "report.md").read_text().count("figures/probe.png") == 1

"""The report's "Where in the network" section on planted studies written to a real MLflow store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import contract as names
from analysis.crosstrial.layers import depth_order, layer_sentences, layer_table, tap_columns
from analysis.crosstrial.report import Report, analyze
from tests.analysis.conftest import FakeTrial, synth_trial, write_study

TAPS = ("act1", "layer1", "layer2", "layer3", "layer4")
HEADLINE = names.fewshot_key("5w5s", "ncc")


def layered_trials(n: int = 12, seed: int = 0) -> list[FakeTrial]:
    """Planted: layer2's target CDNV ranks the trials' headline accuracy (almost) exactly; act1's
    and layer1's are noise; NCC accuracy peaks at layer3 and falls at layer4 (a tunnel);
    layer4 is the penultimate layer (its values are the penultimate's, as in a ResNet)."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(n):
        acc = float(rng.uniform(0.5, 0.9))
        t = synth_trial({"weight_decay": float(10 ** rng.uniform(-5, -2))},
                        cdnv_final=float(np.exp(rng.normal(0, 0.6))), acc_final=acc,
                        src_acc_final=float(rng.uniform(0.6, 0.9)), epochs=3, rng=rng)
        for e in t.metrics[names.CDNV_TARGET]:
            left = 1.0 - e / 3
            for tap in TAPS:
                if tap == "layer4":
                    cdnv, tap_acc = t.metrics[names.CDNV_TARGET][e], t.metrics[HEADLINE][e]
                elif tap == "layer2":
                    cdnv, tap_acc = 2.0 * (1.0 - acc) * 3.0 ** left, acc - 0.1
                else:
                    cdnv, tap_acc = float(rng.uniform(1, 5)), acc - 0.2
                if tap == "layer3":
                    tap_acc = t.metrics[HEADLINE][e] + 0.05
                t.metrics.setdefault(names.layer_key(tap, "cdnv", names.TARGET), {})[e] = cdnv
                t.metrics.setdefault(names.layer_fewshot_key(tap, "5w5s"), {})[e] = tap_acc
        trials.append(t)
    return trials


@pytest.fixture(scope="module")
def layered(empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Report:
    folder = tmp_path_factory.mktemp("layers")
    shutil.copy(empty_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    write_study(uri, "layered", layered_trials(), searched=["weight_decay"])
    return analyze("layered", uri, folder / "out", n_boot=300)


def test_depth_order_and_the_penultimate_merge() -> None:
    assert depth_order(["layer3", "act1", "layer10", "layer2"]) == [
        "act1", "layer2", "layer3", "layer10"]
    assert depth_order(["groups.1", "conv1", "groups.0"]) == ["conv1", "groups.0", "groups.1"]
    frame = pd.DataFrame({names.layer_key("layer4", "cdnv", "target"): [1.0, 2.0],
                          names.layer_key("act1", "cdnv", "target"): [3.0, 4.0],
                          names.CDNV_TARGET: [1.0, 2.0], HEADLINE: [0.5, 0.6]})
    assert [tap for tap, _, _ in tap_columns(frame, HEADLINE)] == ["act1", "layer4 = penultimate"]
    frame[names.CDNV_TARGET] = [1.5, 2.0]  # a WideResNet: the penultimate is its own layer
    assert [tap for tap, _, _ in tap_columns(frame, HEADLINE)] == ["act1", "layer4",
                                                                   "penultimate"]


def test_layer_table_is_the_correlate_machinery_per_tap(layered: Report) -> None:
    table = layered.tables["layers"]
    assert list(dict.fromkeys(table["tap"])) == ["act1", "layer1", "layer2", "layer3",
                                                 "layer4 = penultimate"]
    final = pd.read_csv(layered.path.parent / "trials.csv")  # written by the report
    assert len(final) == 12
    row = table[(table.tap == "layer2") & (table.predictor == "cdnv")
                & (table.method == "spearman")].iloc[0]
    assert row.estimate == pytest.approx(-1.0)  # planted: a monotone function of accuracy
    assert row.ci_low <= row.estimate <= row.ci_high and row.n_trials == 12
    assert {"spearman", "partial_spearman"} == set(table["method"])
    # the penultimate's own NCC accuracy is the headline: not correlated with itself
    assert not len(table[(table.tap == "layer4 = penultimate") & (table.predictor == "ncc")])


def test_spearman_equals_scipy_on_the_final_rows() -> None:
    rng = np.random.default_rng(3)
    final = pd.DataFrame({"trial_index": np.arange(9), HEADLINE: rng.uniform(0.4, 0.9, 9),
                          names.SOURCE_TEST_ACC: rng.uniform(0.5, 0.9, 9),
                          names.layer_key("layer1", "cdnv", "target"): rng.uniform(1, 3, 9),
                          names.layer_fewshot_key("layer1", "5w5s"): rng.uniform(0.3, 0.8, 9)})
    table = layer_table(final, HEADLINE, n_boot=200)
    for predictor, col in (("cdnv", names.layer_key("layer1", "cdnv", "target")),
                           ("ncc", names.layer_fewshot_key("layer1", "5w5s"))):
        got = table[(table.predictor == predictor) & (table.method == "spearman")].iloc[0]
        assert got.estimate == pytest.approx(stats.spearmanr(final[col], final[HEADLINE])[0])


def test_report_section_verdict_figures_and_parent_metrics(layered: Report) -> None:
    out = layered.path.parent
    for stem in ("layers_by_depth", "layers_heatmap"):
        assert (out / "figures" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    html = layered.path.read_text()
    assert '<h2 id="layers">Where in the network</h2>' in html
    assert "the target CDNV at layer2 ranked the trials" in html
    assert "lower CDNV there went with higher accuracy" in html
    assert "peaked at layer3 in 12 of 12 trials" in html and "a tunnel" in html
    m = layered.metrics
    assert m[names.analysis_key("layers", "best", "depth")] == 2.0
    assert m[names.analysis_key("layers", "best", "spearman_estimate")] == pytest.approx(-1.0)
    assert names.analysis_key("layers", "spearman", "act1", "target_cdnv") in m


def test_no_layer_metrics_says_so() -> None:
    empty = layer_table(pd.DataFrame({"trial_index": [0], HEADLINE: [0.5]}), HEADLINE)
    assert len(empty) == 0
    assert "No per-layer metrics were logged" in layer_sentences(empty, pd.DataFrame(),
                                                                 HEADLINE)[0]

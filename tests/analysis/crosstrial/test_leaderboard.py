"""The predictor leaderboard on synthetic MLflow studies with a planted best predictor."""

from __future__ import annotations

from collections.abc import Callable
from html import escape as html_escape

import numpy as np
import pytest
from scipy import stats

from analysis.crosstrial.leaderboard import (
    BASELINE,
    POOLED_NCTI,
    leaderboard_table,
    orientation,
    pooled_ncti,
    verdict,
    verdict_sentence,
)
from analysis.crosstrial.leaderboard_figure import forest_plot
from analysis.crosstrial.runs import load_study
from tests.analysis.conftest import synth_trial, write_study

N_TRIALS = 14


def planted_study(uri: str, *, knn_noise: float = 0.002, ncti_noise: float = 0.05,
                  seed: int = 0) -> None:
    """Trials whose 5w5s NCC accuracy is followed closely by k-NN accuracy (the planted winner),
    loosely by source accuracy and target CDNV, and not at all by LogME."""
    rng = np.random.default_rng(seed)
    acc = np.linspace(0.45, 0.9, N_TRIALS)
    trials = []
    for i, a in enumerate(acc):
        t = synth_trial({"weight_decay": float(10 ** rng.uniform(-5, -2))},
                        cdnv_final=float(0.5 * np.exp(-3 * a + rng.normal(0, 0.4))),
                        acc_final=float(a), src_acc_final=float(0.5 + 0.4 * a
                                                                 + rng.normal(0, 0.15)),
                        epochs=2, rng=rng)
        final = max(t.metrics["source/test_acc"])
        for name, value in {
            "knn": a + rng.normal(0, knn_noise), "logme": rng.normal(),
            "ncti_seli": 10 * a + rng.normal(0, 10 * ncti_noise),
            "ncti_ncc": a + rng.normal(0, ncti_noise), "ncti_vc": 3 - a + rng.normal(0, ncti_noise),
        }.items():
            t.metrics[f"transfer/{name}/target"] = {final: float(value)}
        # a per-layer statistic, as issue "Where in the network" logs it
        t.metrics["layer/layer2/cdnv/target"] = {final: float(1 - a + rng.normal(0, 0.1))}
        trials.append(t)
        assert i == len(trials) - 1
    write_study(uri, "lb", trials, searched=["weight_decay"])


def test_orientation_per_predictor():
    assert orientation("cdnv/target") == -1 and orientation("nc1/source_train") == -1
    assert orientation("layer/layer2/cdnv/target") == -1
    assert orientation("layer/layer2/erank/target") == 1
    assert orientation("transfer/ncti_vc/target") == -1
    assert orientation("transfer/logme/target") == 1 and orientation(BASELINE) == 1


def test_planted_winner_separates_from_source_accuracy(new_store: Callable[[], str]):
    uri = new_store()
    planted_study(uri)
    frame = load_study("lb", uri).usable
    table, taus = leaderboard_table(frame, n_boot=200, seed=0)
    y = "fewshot/5w5s/ncc/acc"
    v = verdict(taus, y)
    assert v is not None and v.winner == "transfer/knn/target"
    assert v.winner_tau_w.estimate > 0.95 and v.separates
    assert "clearly better than source test accuracy" in verdict_sentence(v)
    row = table[(table["candidate"] == "cdnv/target") & (table["transfer"] == y)]
    assert row["orientation"].iloc[0] == "lower is better"
    # oriented: lower CDNV goes with higher accuracy here, so the oriented Spearman is positive
    assert row.set_index("method").loc["spearman", "estimate"] > 0.3
    # tau_w is scipy's weightedtau on the oriented values
    knn = frame["transfer/knn/target"].to_numpy(float)
    tw = table[(table["candidate"] == "transfer/knn/target") & (table["transfer"] == y)
               & (table["method"] == "weighted_tau")]
    assert tw["estimate"].iloc[0] == pytest.approx(
        stats.weightedtau(knn, frame[y].to_numpy(float)).statistic)
    assert set(table["method"]) == {"spearman", "kendall", "partial_spearman", "weighted_tau"}
    assert POOLED_NCTI in set(table["candidate"]) and BASELINE in set(table["candidate"])
    layer = table[table["candidate"] == "layer/layer2/cdnv/target"]
    assert set(layer["kind"]) == {"layer"} and set(layer["orientation"]) == {"lower is better"}
    fig = forest_plot(table, y)
    assert len(fig.axes) == 2


def test_no_separation_when_the_winner_is_noisy(new_store: Callable[[], str]):
    uri = new_store()
    planted_study(uri, knn_noise=0.3, ncti_noise=0.3, seed=3)
    _, taus = leaderboard_table(load_study("lb", uri).usable, n_boot=200, seed=0)
    v = verdict(taus, "fewshot/5w5s/ncc/acc")
    assert v is not None
    if v.winner != BASELINE:
        assert not v.separates
        assert "does not separate" in verdict_sentence(v)


def test_pooled_ncti_min_max_normalises_the_parts():
    import pandas as pd

    f = pd.DataFrame({"transfer/ncti_seli/target": [1.0, 3.0, 2.0],
                      "transfer/ncti_ncc/target": [0.5, 0.7, 0.9],
                      "transfer/ncti_vc/target": [4.0, 2.0, 3.0]})
    got = pooled_ncti(f)
    assert got is not None
    assert got.tolist() == pytest.approx([0 + 0 - 1, 1 + 0.5 - 0, 0.5 + 1 - 0.5])
    assert pooled_ncti(f.drop(columns="transfer/ncti_vc/target")) is None


def test_vectorised_weighted_tau_equals_scipy_with_ties_and_duplicates():
    from analysis.crosstrial.leaderboard import weighted_tau

    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, 5, 12).astype(float), rng.normal(size=12)])
    y = np.stack([rng.normal(size=12), rng.integers(0, 4, 12).astype(float)])
    idx = rng.integers(0, 12, (3, 12))  # bootstrap-like draws: repeated points
    xs, ys = np.concatenate([x, x[0][idx]]), np.concatenate([y, y[1][idx]])
    want = [stats.weightedtau(a, b).statistic for a, b in zip(xs, ys, strict=True)]
    assert weighted_tau(xs, ys) == pytest.approx(want, rel=1e-12)


def test_report_opens_the_leaderboard_with_a_verdict(new_store: Callable[[], str], tmp_path):
    from analysis.crosstrial.report import analyze

    uri = new_store()
    planted_study(uri)
    rep = analyze("lb", uri, tmp_path / "out", n_boot=200, log_to_mlflow=False)
    html = rep.path.read_text()
    assert "Which statistic ranks transfer best?" in html
    line = next(v for v in rep.verdict if v.startswith("Of 14 candidates"))
    assert "k-NN leave-one-out accuracy" in line
    assert "clearly better than source test accuracy" in line
    assert html_escape(line) in html
    assert (tmp_path / "out" / "leaderboard.csv").stat().st_size > 0
    assert (tmp_path / "out" / "figures" / "leaderboard.png").exists()
    assert rep.metrics["analysis/leaderboard/winner_tau_w"] > 0.95
    assert rep.metrics["analysis/leaderboard/winner/transfer_knn_target"] > 0.95
    assert rep.metrics["analysis/leaderboard/winner_separates_from_source"] == 1.0

"""Studies of many trials: the bulk history read, the dense figures, the scaling benchmark."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from analysis.crosstrial import dense_figures as dense
from analysis.crosstrial.history_read import read_histories, store_kind
from analysis.crosstrial.runs import load_study
from tests.analysis.conftest import synth_trial, write_study

ACC = "fewshot/5w5s/ncc/acc"
ROOT = Path(__file__).resolve().parents[3]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["run_id", "key", "step", "timestamp", "value"]).reset_index(
        drop=True)


def test_store_kind_picks_the_bulk_path() -> None:
    assert store_kind("sqlite:////tmp/x.db") == "sql"
    assert store_kind("postgresql+psycopg://u:p@127.0.0.1:5432/db") == "sql"
    assert store_kind("mysql://u@h/db") == "sql"
    assert store_kind("https://mlflow.example.org") == "rest"
    assert store_kind("file:///tmp/mlruns") == "other"
    assert store_kind("/tmp/mlruns") == "other"


def test_bulk_sql_read_equals_the_per_key_calls(new_store: Callable[[], str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """NaN, +/-inf and a step logged twice come back the same through one SELECT as through
    one get_metric_history call per (run, key)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = new_store()
    trials = [synth_trial({"weight_decay": 10.0 ** -(i + 2)}, cdnv_final=0.1 * (i + 1),
                          acc_final=0.8, epochs=3) for i in range(5)]
    write_study(uri, "bulk", trials, searched=["weight_decay"])
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("nctune").experiment_id],
                              "tags.`nctune.role` = 'trial'")
    odd = runs[0].info.run_id
    later = int(time.time() * 1000) + 10_000  # after write_study's timestamps
    client.log_batch(odd, metrics=[Metric("source/train_loss", math.nan, later, 2),
                                   Metric("source/train_loss", math.inf, later, 3),
                                   Metric("cdnv/target", -math.inf, later + 1, 3),
                                   Metric("cdnv/target", 0.5, later + 2, 3)])  # step 3 again
    runs = client.search_runs([client.get_experiment_by_name("nctune").experiment_id],
                              "tags.`nctune.role` = 'trial'")
    with caplog.at_level(logging.WARNING, logger="analysis.crosstrial.history_read"):
        bulk = _sorted(read_histories(client, uri, runs))
    assert not caplog.records, "the bulk SQL path fell back to per-key calls"
    per_key = _sorted(read_histories(client, uri, runs, bulk=False))
    assert len(bulk) == len(per_key) == sum(len(r.data.metrics) for r in runs) * 3 + 4
    pd.testing.assert_frame_equal(bulk, per_key)
    assert bulk["value"].isna().sum() == 1  # the NaN, as NaN (MLflow stores 0 + is_nan)
    s = load_study("bulk", uri)
    row = s.history[(s.history["run_id"] == odd) & (s.history["epoch"] == 3)].iloc[0]
    assert row["source/train_loss"] == math.inf and row["cdnv/target"] == 0.5  # later write
    assert s.trials.set_index("run_id").loc[odd, "diverged"]


def _dense_study(n: int, epochs: int = 4, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Final and history frames of n trials: accuracy rises as target CDNV falls."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=n)
    rows = []
    for i in range(n):
        for e in range(1, epochs + 1):
            cdnv = 0.5 * np.exp(-quality[i] - e / epochs)
            rows.append({"trial_index": i, "epoch": e, "cdnv/target": cdnv,
                         "cdnv/source_train": 0.4 * cdnv, "cdnv/source_test": 0.6 * cdnv,
                         ACC: 1 / (1 + np.exp(-quality[i] - e / epochs))})
    history = pd.DataFrame(rows)
    final = history[history["epoch"] == epochs].reset_index(drop=True)
    return final, history


def test_extremes_names_the_best_and_worst() -> None:
    final = pd.DataFrame({"trial_index": range(10), ACC: [5, 1, 9, 3, 0, 8, 2, 7, 4, 6.0]})
    assert dense.extremes(final, ACC, k=2) == {4: "worst", 1: "worst", 2: "best", 5: "best"}
    assert dense.extremes(final.head(3), ACC, k=3) == {1: "worst", 2: "best"}  # k <= n / 2
    assert dense.extremes(final, None) == {}
    assert not dense.is_dense(dense.DENSE_TRIALS) and dense.is_dense(dense.DENSE_TRIALS + 1)


def test_dense_scatter_is_a_histogram_with_the_extremes_named() -> None:
    final, history = _dense_study(400)
    fig = dense.transfer_vs_cdnv_dense(final, history, ACC)
    ax, ax2 = fig.axes[:2]
    for a, points in ((ax, 400), (ax2, 1600)):
        hexes = [c for c in a.collections if isinstance(c, PolyCollection)
                 and c.get_array() is not None and len(c.get_array())]
        assert hexes and int(hexes[0].get_array().sum()) == points  # every point in a bin
    best = final.nlargest(3, ACC)["trial_index"]
    worst = final.nsmallest(3, ACC)["trial_index"]
    expected = {f"t{i:03d}" for i in [*best, *worst]}
    for a in (ax, ax2):
        assert {t.get_text() for t in a.texts} == expected
    assert len(ax2.lines) == 6  # the named trials' paths, nothing per other trial


def test_dense_epoch_curves_are_quantile_bands_over_trials() -> None:
    final, history = _dense_study(300, epochs=5)
    from analysis.crosstrial.figures import cdnv_over_epochs
    from analysis.crosstrial.plotting import colours

    fig = cdnv_over_epochs(history, colours(final, None), final, ACC)
    target = fig.axes[2]
    median = next(ln for ln in target.lines if ln.get_label().startswith("median"))
    expected = history.groupby("epoch")["cdnv/target"].median().to_numpy()
    np.testing.assert_allclose(median.get_ydata(), expected)
    assert len(target.lines) == 1 + 6  # the median and the six named trials
    assert len({t.get_text() for t in target.texts}) == 6


def test_figures_switch_views_above_the_threshold() -> None:
    """The study's figures pick the dense view by the usable trial count."""
    from analysis.crosstrial.figures import cdnv_over_epochs
    from analysis.crosstrial.plotting import colours

    final, history = _dense_study(dense.DENSE_TRIALS)
    fig = cdnv_over_epochs(history, colours(final, None), final, ACC)
    assert len(fig.axes[2].lines) == dense.DENSE_TRIALS  # small study: a line per trial
    assert not fig.axes[2].texts


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_scaling_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """benchmarks/analysis_scaling.py end to end at 3 trials x 2 epochs (so it cannot rot)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "analysis_scaling.py"), "--sizes", "3",
         "--epochs", "2", "--n-boot", "20", "--keep", str(tmp_path)],
        capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    row = out["sizes"]["3"]
    assert "error" not in row, row
    assert row["usable"] == 3 and row["same_frames"] is True
    assert row["points"] == 3 * 2 * row["keys"] and row["store_mb"] > 0
    assert row["analyze_s"] >= row["load_s"] + row["leaderboard_s"] + row["figures_s"]
    assert (tmp_path / "n3" / "report" / "report.html").is_file()

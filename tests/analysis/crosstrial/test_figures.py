"""crosstrial.figures: the effects figure's layout, views and axes, on studies from real stores."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis.crosstrial.effects import hyperparameter_effects, per_value_table
from analysis.crosstrial.figures import effect_curves
from analysis.crosstrial.plotting import DPI, colours, log_axis, tick_label, trend
from analysis.crosstrial.runs import StudyRuns, load_study
from tests.analysis.conftest import loguniform, synth_trial, write_study

ACC = "fewshot/5w5s/ncc/acc"
TARGETS = ["cdnv/target", ACC]


def _labels(ax: Any, which: str = "x") -> list[str]:
    """The labelled major ticks inside the view."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    locs = [v for v in axis.get_major_locator()() if lo <= v <= hi]
    return [axis.get_major_formatter()(v) for v in locs]


def _by_gid(ax: Any, gid: str) -> list[Any]:
    return [a for a in [*ax.lines, *ax.collections] if a.get_gid() == gid]


def test_tick_labels_are_compact_and_plain_where_they_can_be() -> None:
    assert [tick_label(v) for v in (0.05, 0.2, 1.0, 300.0)] == ["0.05", "0.2", "1", "300"]
    assert [tick_label(v) for v in (3e-5, 1e-4, 2e6)] == ["3e−5", "1e−4", "2e6"]
    assert tick_label(0.003, sci=True) == "3e−3"


@pytest.mark.parametrize("lo, hi, plain", [(1.6e-5, 4.7e-3, False), (0.02, 0.3, True),
                                           (0.07, 0.23, True), (1e-6, 1.0, False)])
def test_log_axis_labels_few_distinct_and_one_style(lo: float, hi: float, plain: bool) -> None:
    ax = Figure().subplots()
    ax.scatter([lo, hi], [0, 1])
    log_axis(ax)
    labels = _labels(ax)
    assert 2 <= len(labels) <= 6 and len(set(labels)) == len(labels), labels
    sci = [bool(re.fullmatch(r"\de−?\d", t)) for t in labels]
    assert not any(sci) if plain else all(sci), labels  # no '3e−4' next to '0.001'


def test_trend_recovers_a_planted_slope_and_clips_accuracy_bands() -> None:
    rng = np.random.default_rng(1)
    x = loguniform(rng, 1e-5, 1e-2, 12)
    y = 64 - 8 * np.log10(x) + rng.normal(0, 0.5, 12)  # % per decade of x, reaches ~100
    ax = Figure().subplots()
    fit = trend(ax, x, y, log_x=True, clip=(0.0, 100.0))
    assert fit is not None and fit[0] == pytest.approx(-8, abs=0.5)
    (line,) = _by_gid(ax, "trend")
    gx, gy = line.get_data()
    assert gx.min() == pytest.approx(x.min()) and gx.max() == pytest.approx(x.max())
    inside = (gy[1:] < 100) & (gy[:-1] < 100)  # past 100% the line is clipped too
    assert inside.sum() > 25
    np.testing.assert_allclose((np.diff(gy) / np.diff(np.log10(gx)))[inside], fit[0], rtol=1e-6)
    (band,) = _by_gid(ax, "band")
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    assert ys.max() <= 100.0 and ys.max() > 95  # the band was cut, not dropped
    assert fit[1] and "clipped" in band.get_label()
    # log y: the fit is a power law, a straight line on log-log axes
    ax = Figure().subplots()
    fit = trend(ax, x, 0.05 * x ** -0.4, log_x=True, log_y=True)
    assert fit is not None and fit[0] == pytest.approx(-0.4) and not fit[1]


def test_no_trend_from_a_handful_of_points() -> None:
    ax = Figure().subplots()
    assert trend(ax, np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0]),
                 log_x=False) is None
    assert not ax.lines and not ax.collections


def _study(uri: str, name: str, n: int) -> StudyRuns:
    """Continuous wd (log) and dropout, ints with repeats (epochs), a categorical optimizer;
    2 adamw trials with accuracies near the top and far apart, so their t interval passes
    100%."""
    rng = np.random.default_rng(4)
    wd, do = loguniform(rng, 1e-5, 1e-2, n), rng.uniform(0.0, 0.5, n)
    epochs = rng.choice([4, 6, 8], n)
    opt = np.array(["adamw", "adamw"] + ["sgd"] * (n - 2))
    cdnv = 0.05 * (1e-2 / wd) ** 0.4 * np.exp(rng.normal(0, 0.1, n))
    acc = np.where(opt == "adamw", [0.84, 0.98] + [0.0] * (n - 2), 0.6 + rng.normal(0, 0.02, n))
    # the searched 'epochs' is only a param here: every history is 2 epochs long
    trials = [synth_trial({"weight_decay": float(wd[i]), "dropout": float(do[i]),
                           "epochs": int(epochs[i]), "optimizer": str(opt[i])},
                          cdnv_final=float(cdnv[i]), acc_final=float(acc[i]), epochs=2, rng=rng)
              for i in range(n)]
    space: dict[str, dict[str, Any]] = {
        "weight_decay": {"type": "log_float", "low": 1e-5, "high": 1e-2},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "epochs": {"type": "int", "low": 4, "high": 8},
        "optimizer": {"type": "categorical", "values": ["sgd", "adamw"]}}
    write_study(uri, name, trials, searched=list(space), space=space)
    return load_study(name, uri)


@pytest.fixture(scope="module")
def mixed(empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyRuns, Figure]:
    folder = tmp_path_factory.mktemp("figures")
    shutil.copy(empty_store, folder / "mlflow.db")
    s = _study(f"sqlite:///{folder / 'mlflow.db'}", "mixed", 10)  # 10 values: under 12
    params = ["weight_decay", "dropout", "epochs", "optimizer"]
    fig = effect_curves(s.usable, params, TARGETS, hyperparameter_effects(s, n_boot=200),
                        per_value_table(s), colours(s.usable, "weight_decay", log=True), s.space)
    return s, fig


def _panel(fig: Figure, row: int, col: int) -> Any:
    return fig.axes[2 * row + col]  # axes in row order; the colour bar comes last


def test_one_row_per_parameter_two_targets_side_by_side(mixed: tuple[StudyRuns, Figure]) -> None:
    _, fig = mixed
    w, h = fig.get_size_inches() * DPI
    assert w <= 1700 and h <= 2600  # readable at 150 dpi, not a 3433 px strip
    for r, p in enumerate(["weight_decay", "dropout", "epochs", "optimizer"]):
        for k, unit in enumerate(["target CDNV (log scale)", "accuracy (%)"]):
            ax = _panel(fig, r, k)
            assert ax.get_xlabel().startswith(p) and ax.get_ylabel().endswith(unit)
            assert ax.get_yscale() == ("log" if k == 0 else "linear")
            assert _by_gid(ax, "trials")[0].get_offsets().shape[0] == 10


def test_continuous_parameters_get_points_and_a_trend(mixed: tuple[StudyRuns, Figure]) -> None:
    _, fig = mixed
    for r in (0, 1):  # weight_decay (log), dropout (linear): every trial its own value
        for k in (0, 1):
            ax = _panel(fig, r, k)
            assert not ax.containers  # no per-value means joined in x order
            assert len(_by_gid(ax, "trend")) == 1 and len(_by_gid(ax, "band")) == 1
            assert ax.get_title(loc="left").startswith("Spearman ρ = ")
    assert _panel(fig, 0, 0).get_xscale() == "log" and _panel(fig, 1, 0).get_xscale() == "linear"
    labels = _labels(_panel(fig, 0, 0))
    assert 3 <= len(labels) <= 6 and all("e−" in t for t in labels), labels
    # the CDNV trend is fitted on log CDNV against log wd: planted exponent -0.4
    gx, gy = _by_gid(_panel(fig, 0, 0), "trend")[0].get_data()
    slope = np.polyfit(np.log10(gx), np.log10(gy), 1)[0]
    assert slope == pytest.approx(-0.4, abs=0.05)


def test_few_valued_parameters_get_means_with_clipped_intervals(
        mixed: tuple[StudyRuns, Figure]) -> None:
    s, fig = mixed
    pv = per_value_table(s)
    assert set(pv["param"]) == {"epochs", "optimizer"}
    for r, p in ((2, "epochs"), (3, "optimizer")):
        for k, t in enumerate(TARGETS):
            ax = _panel(fig, r, k)
            assert not _by_gid(ax, "trend") and len(ax.containers) == 1
            data = ax.containers[0].lines[0]
            means = pv[(pv["param"] == p) & (pv["target"] == t)]["mean"].to_numpy(float)
            np.testing.assert_allclose(data.get_ydata(), means * (1 if k == 0 else 100))
    opt = _panel(fig, 3, 1)  # adamw: 2 accuracies ~14 points apart near the top
    assert [t.get_text() for t in opt.get_xticklabels()] == ["adamw", "sgd"]
    tops = [seg[:, 1].max() for seg in opt.containers[0].lines[2][0].get_segments()]
    assert max(tops) == pytest.approx(100.0)
    raw = pv[(pv["param"] == "optimizer") & (pv["target"] == ACC)]["ci_high"].max()
    assert raw > 1.0  # the t interval itself passed 100% ...
    assert any("clipped" in t.get_text() for t in opt.texts)  # ... and the panel says so
    assert opt.get_title(loc="left").startswith("Kruskal–Wallis p = ")
    ticks = [v for v in _panel(fig, 2, 0).get_xticks() if 4 <= v <= 8]
    assert 4 in ticks and 8 in ticks and all(v == int(v) for v in ticks)  # ints, numeric axis


def test_small_study_shows_points_without_a_trend(new_store: Callable[[], str]) -> None:
    s = _study(new_store(), "small", 4)
    fig = effect_curves(s.usable, ["weight_decay"], TARGETS, hyperparameter_effects(s, n_boot=50),
                        per_value_table(s), colours(s.usable, None), s.space)
    for ax in fig.axes[:2]:
        assert len(_by_gid(ax, "trials")) == 1 and not _by_gid(ax, "trend")

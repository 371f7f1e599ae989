"""crosstrial.effects: planted hyperparameter effects and importances, through real stores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.crosstrial.effects import (
    create_evaluator,
    effect_params,
    few_values,
    hyperparameter_effects,
    importances,
    log_scaled,
    per_value_table,
)
from analysis.crosstrial.runs import StudyRuns, load_study
from tests.analysis.conftest import loguniform, synth_trial, write_study

ACC = "fewshot/5w5s/ncc/acc"


@pytest.fixture(scope="module")
def planted(empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyRuns:
    """weight_decay drives target CDNV; label_smoothing drives accuracy; dropout, optimizer
    and seed do nothing."""
    import shutil

    folder = tmp_path_factory.mktemp("effects")
    shutil.copy(empty_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    rng = np.random.default_rng(5)
    n = 30
    wd, ls = loguniform(rng, 1e-5, 1e-2, n), rng.uniform(0.0, 0.3, n)
    do, opt = rng.uniform(0.0, 0.5, n), rng.choice(["sgd", "adamw"], n)
    cdnv = 0.05 * (1e-2 / wd) ** 0.4 * np.exp(rng.normal(0, 0.1, n))
    acc = 0.6 + ls + rng.normal(0, 0.01, n)
    trials = [synth_trial({"weight_decay": float(wd[i]), "label_smoothing": float(ls[i]),
                           "dropout": float(do[i]), "optimizer": str(opt[i]), "seed": i},
                          cdnv_final=float(cdnv[i]), acc_final=float(acc[i]), epochs=2, rng=rng)
              for i in range(n)]
    write_study(uri, "planted", trials,
                searched=["weight_decay", "label_smoothing", "dropout", "optimizer", "seed"])
    return load_study("planted", uri)


def test_seeds_are_replicates_not_effects(planted: StudyRuns) -> None:
    assert effect_params(planted) == ["weight_decay", "label_smoothing", "dropout", "optimizer"]


def test_planted_effects_have_the_right_sign_and_the_rest_cover_zero(planted: StudyRuns) -> None:
    e = hyperparameter_effects(planted, n_boot=1000).set_index(["param", "target"])
    wd = e.loc[("weight_decay", "cdnv/target")]
    assert wd["spearman"] < -0.8 and wd["ci_high"] < 0
    ls = e.loc[("label_smoothing", ACC)]
    assert ls["spearman"] > 0.8 and ls["ci_low"] > 0
    for p in ("dropout",):
        for t in ("cdnv/target", ACC):
            assert e.loc[(p, t), "ci_low"] < 0 < e.loc[(p, t), "ci_high"]
    opt = e.loc[("optimizer", "cdnv/target")]
    assert opt["kind"] == "categorical" and np.isnan(opt["spearman"]) and opt["p_value"] > 0.05


@pytest.mark.parametrize("evaluator", ["fanova", "ped_anova"])
def test_planted_important_parameter_ranks_first(planted: StudyRuns, evaluator: str) -> None:
    imp = importances(planted, evaluators=(evaluator,), seed=0)
    top = imp[imp["rank"] == 1].set_index("target")["param"]
    assert top["cdnv/target"] == "weight_decay"
    assert top[ACC] == "label_smoothing"
    for _, g in imp.groupby("target"):
        assert g["importance"].sum() == pytest.approx(1.0)
        assert set(g["param"]) == {"weight_decay", "label_smoothing", "dropout", "optimizer"}


def test_fanova_is_reproducible_with_its_seed(planted: StudyRuns) -> None:
    a = importances(planted, evaluators=("fanova",), seed=3)
    b = importances(planted, evaluators=("fanova",), seed=3)
    np.testing.assert_allclose(a["importance"].to_numpy(float), b["importance"].to_numpy(float))
    with pytest.raises(ValueError, match="not one of"):
        create_evaluator("shap")


def test_grid_sweep_means_and_intervals_per_value(new_store: Callable[[], str]) -> None:
    uri = new_store()
    rng = np.random.default_rng(7)
    trials = []
    truth: dict[float, list[tuple[float, float]]] = {}
    for ls in (0.0, 0.1, 0.2):
        for seed in range(4):
            cdnv = 0.1 * (1 + 5 * ls) * float(np.exp(rng.normal(0, 0.05)))
            acc = 0.7 + ls + float(rng.normal(0, 0.01))
            truth.setdefault(ls, []).append((cdnv, acc))
            trials.append(synth_trial({"label_smoothing": ls, "seed": seed}, cdnv_final=cdnv,
                                      acc_final=acc, epochs=1))
    write_study(uri, "grid", trials, searched=["label_smoothing", "seed"], sampler="grid")
    pv = per_value_table(load_study("grid", uri)).set_index(["target", "value"])
    for ls, pairs in truth.items():
        c, a = np.array(pairs).T
        r = pv.loc[("cdnv/target", ls)]
        assert r["n"] == 4
        assert r["mean"] == pytest.approx(stats.gmean(c), rel=1e-6)  # CDNV: geometric mean
        lc = np.log10(c)
        half = stats.t.ppf(0.975, 3) * lc.std(ddof=1) / 2
        assert r["ci_low"] == pytest.approx(10 ** (lc.mean() - half))
        assert r["ci_high"] == pytest.approx(10 ** (lc.mean() + half))
        assert r["mean"] == pytest.approx(0.1 * (1 + 5 * ls), rel=0.1)
        r = pv.loc[(ACC, ls)]
        half = stats.t.ppf(0.975, 3) * a.std(ddof=1) / 2
        assert r["mean"] == pytest.approx(a.mean()) and r["ci_high"] == pytest.approx(
            a.mean() + half)


def test_log_scale_comes_from_the_space_or_from_the_values(new_store: Callable[[], str]) -> None:
    rng = np.random.default_rng(2)
    wd, do = loguniform(rng, 1e-5, 1e-1, 40), rng.uniform(0.005, 0.5, 40)
    assert log_scaled(pd.Series(wd)) and not log_scaled(pd.Series(do))  # guessed from values
    assert not log_scaled(pd.Series([True, False])) and not log_scaled(pd.Series(["a", "b"]))
    uri = new_store()
    trials = [synth_trial({"weight_decay": float(wd[i]), "dropout": float(do[i])},
                          cdnv_final=0.1, acc_final=0.8, epochs=1) for i in range(3)]
    space = {"weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
             "dropout": {"type": "log_float", "low": 0.005, "high": 0.5}}
    write_study(uri, "spaced", trials, searched=["weight_decay", "dropout"], space=space)
    s = load_study("spaced", uri)
    assert s.space == space  # the driver's space.json overrides the guess
    assert not log_scaled(s.final["weight_decay"], s.space["weight_decay"])
    assert log_scaled(s.final["dropout"], s.space["dropout"])


def test_too_few_trials_give_reasons_not_crashes(new_store: Callable[[], str]) -> None:
    uri = new_store()
    trials = [synth_trial({"weight_decay": w}, cdnv_final=0.1, acc_final=0.8, epochs=1)
              for w in (1e-4, 1e-3)]
    write_study(uri, "two", trials, searched=["weight_decay"])
    s = load_study("two", uri)
    imp = importances(s)
    assert imp["param"].isna().all() and imp["reason"].str.contains("2 usable").all()
    e = hyperparameter_effects(s)
    assert e["spearman"].isna().all() and e["reason"].str.contains("needs at least 3").all()


def test_per_value_summaries_only_where_values_recur() -> None:
    rng = np.random.default_rng(0)
    assert not few_values(pd.Series(rng.uniform(0, 1, 10)))  # a range: each trial its own value
    assert few_values(pd.Series([4, 6, 8, 4, 6, 8, 4, 6]))  # ints with repeats
    assert not few_values(pd.Series([4, 6, 8, 5]))  # 4 values over 4 trials: a trend instead
    assert few_values(pd.Series([0.1, 0.2, 0.3]), {"type": "categorical"})  # a grid sweep
    assert few_values(pd.Series(["sgd", "adamw", "sgd"]))
    assert not few_values(pd.Series(np.resize(np.arange(13.0), 26)))  # over MAX_GRID_VALUES


def test_fanova_stops_growing_with_the_study():
    from analysis.crosstrial.effects import FANOVA_FULL_TRIALS, FANOVA_LARGE_DEPTH, fanova_for

    small, large = fanova_for(FANOVA_FULL_TRIALS, 0), fanova_for(FANOVA_FULL_TRIALS + 1, 0)
    assert small._evaluator._forest.max_depth == 64  # Optuna's default, as before
    assert large._evaluator._forest.max_depth == FANOVA_LARGE_DEPTH

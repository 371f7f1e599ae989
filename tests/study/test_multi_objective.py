"""Multi-objective search: a list of metrics and modes, Optuna's Pareto set everywhere a single
objective shows its best (progress line, summary, `nctune ls`, the report's Pareto front); and a
warm-start point, tried first."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from pydantic import ValidationError

from analysis.crosstrial.pareto import pareto_mask
from study.cli import main
from study.run.driver import run_study
from tests.study.studies import tiny_study

TWO = {"metric": ["fewshot/5w5s/ncc/acc", "source/test_acc"], "mode": ["max", "max"]}


def slow_dominated(values: np.ndarray, modes: list[str]) -> list[bool]:
    """The definition, one pair at a time: on the front when no other point dominates."""
    sign = [1 if m == "max" else -1 for m in modes]
    out = []
    for i, a in enumerate(values):
        dominated = any(all(s * b[k] >= s * a[k] for k, s in enumerate(sign))
                        and any(s * b[k] > s * a[k] for k, s in enumerate(sign))
                        for j, b in enumerate(values) if j != i)
        out.append(not dominated)
    return out


def test_pareto_mask_equals_the_definition_and_a_known_front():
    rng = np.random.default_rng(0)
    for modes in (["max", "max"], ["max", "min"], ["min", "min", "max"]):
        values = rng.integers(0, 5, size=(40, len(modes))).astype(float)  # ties included
        assert pareto_mask(values, modes).tolist() == slow_dominated(values, modes)
    known = np.array([[1.0, 5.0], [2.0, 4.0], [3.0, 1.0], [1.5, 3.0], [2.0, 4.0], [np.nan, 9]])
    assert pareto_mask(known, ["max", "max"]).tolist() == [True, True, True, False, True, False]


@pytest.mark.parametrize(("search", "expected"), [
    ({"metric": TWO["metric"], "mode": "max"}, "a list of metrics needs a list of modes"),
    ({**TWO, "mode": ["max"]}, "1 modes for 2 metrics"),
    ({**TWO, "sampler": "cmaes"}, "cmaes optimises one metric"),
    ({**TWO, "asha": {"grace_period": 1}}, "successive halving ranks trials by one metric"),
    ({"metric": ["source/test_acc", "source/test_acc"], "mode": ["max", "max"]}, "twice"),
    ({"metric": ["source/test_acc", "nosuch/metric"], "mode": ["max", "min"]},
     "no trial reports 'nosuch/metric'"),
])
def test_bad_objectives_are_one_config_error(search, expected, tmp_path):
    with pytest.raises(ValidationError, match=expected):
        tiny_study(tmp_path, search=search)


@pytest.mark.slow
def test_a_two_objective_study_reports_its_pareto_front(tmp_path, local_ray, capsys):
    point = {"weight_decay": 1e-3, "label_smoothing": 0.05}  # a warm start, tried first
    cfg = tiny_study(tmp_path, name="pareto",
                     search={**TWO, "sampler": "nsga2", "points_to_evaluate": [point]})
    state = run_study(cfg, report=True)
    assert state.status == "completed"
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="pareto", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert study.metric_names == TWO["metric"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3 and all(len(t.values) == 2 for t in complete)
    assert study.trials[0].params == point
    # Optuna's own Pareto set is the one nctune prints: the same trials, by their MLflow label.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state.tracking_uri)
    runs = client.search_runs([state.experiment_id],
                              f"tags.mlflow.parentRunId = '{state.parent_run_id}'")
    label = {r.data.tags["nctune.trial_id"]: r.info.run_name.split()[0] for r in runs}
    warm = next(r for r in runs
                if r.data.tags["nctune.trial_id"] == study.trials[0].user_attrs["nctune.trial_id"])
    assert {k: float(warm.data.params[k]) for k in point} == point  # the same trial in MLflow
    optuna_front = sorted(label[t.user_attrs["nctune.trial_id"]] for t in study.best_trials)
    summary = out[out.index("Pareto set ("):]
    printed = sorted(line.split()[0] for line in summary.splitlines()[1:]
                     if line.startswith("  t"))
    assert printed == optuna_front
    assert "Best:" not in out  # no single best in a multi-objective study
    progress = [line for line in out.splitlines() if line.startswith("[") and "3/3" in line]
    assert progress and "Pareto set t" in progress[-1]
    report = (tmp_path / "studies" / "pareto" / "report")
    assert (report / "figures" / "pareto_front.png").stat().st_size > 10_000
    html = (report / "report.html").read_text()
    assert "Pareto front" in html and "Trials on the Pareto front" in html
    capsys.readouterr()
    assert main(["ls", "--root", str(tmp_path)]) == 0
    assert f"Pareto set {', '.join(optuna_front)}" in capsys.readouterr().out

"""A real study end to end: local Ray, OptunaSearch, a sqlite MLflow store, tiny timm models."""

from __future__ import annotations

import json

import optuna
import pytest
from mlflow.tracking import MlflowClient

from analysis import contract as names
from study.run.driver import run_study
from tests.study.studies import tiny_study
from trainables.config import TrialConfig

pytestmark = pytest.mark.slow


def children_of(client: MlflowClient, name: str):
    exp = client.get_experiment_by_name("nctune")
    parents = client.search_runs(
        [exp.experiment_id], f"tags.`nctune.role` = 'study' and tags.`nctune.study` = '{name}'")
    assert len(parents) == 1
    parent = parents[0]
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return exp, parent, children


def test_three_trials_log_every_metric_at_every_epoch(tmp_path, local_ray):
    cfg = tiny_study(tmp_path)
    state = run_study(cfg, report=False)
    assert state.status == "completed"
    client = MlflowClient(state.tracking_uri)
    exp, parent, children = children_of(client, "tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.tags["nctune.status"] == "completed"
    assert parent.data.tags["nctune.searched"] == "weight_decay,label_smoothing"
    assert len(children) == 3
    expected = cfg.metric_names()
    # `evaluation.layers: stages` (the default): every stage of test_resnet is a series too
    taps = ("act1", "layer1", "layer2", "layer3", "layer4")
    assert {names.layer_key(tap, family, split) for tap in taps for family in names.LAYER_FAMILIES
            for split in (names.SOURCE_TRAIN, names.TARGET)} <= expected
    assert {names.layer_fewshot_key(tap, shape) for tap in taps
            for shape in cfg.evaluation.shapes} <= expected
    ray_configs = {
        json.loads((p / "params.json").read_text())["weight_decay"]: json.loads(
            (p / "params.json").read_text())
        for p in (tmp_path / "ray" / "tiny").glob("t*") if (p / "params.json").exists()
    }
    assert len(ray_configs) == 3
    for run in children:
        tags = run.data.tags
        assert tags["nctune.status"] == "completed"
        assert tags["nctune.study"] == "tiny" and tags["nctune.role"] == "trial"
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert set(params) == set(TrialConfig().flat())
        trial_config = ray_configs[float(params["weight_decay"])]
        assert params == {k: str(v) for k, v in trial_config.items()}
        assert run.info.run_name.startswith("t00") and "wd=" in run.info.run_name
        for key in expected:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == [1, 2], (key, steps)
    for artifact in ("config.yaml", "space.json", "manifest.json"):
        assert artifact in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert (tmp_path / "studies" / "tiny" / "config.yaml").exists()
    # The Optuna study, as a user opens it: every trial complete with its final value, one
    # intermediate value per evaluated epoch, and the id that is its MLflow run's tag.
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3
    by_id = {r.data.tags["nctune.trial_id"]: r for r in children}
    for trial in study.trials:
        run = by_id[trial.user_attrs["nctune.trial_id"]]
        metric = client.get_metric_history(run.info.run_id, cfg.search.metric)
        assert trial.intermediate_values == {m.step: m.value for m in metric}
        assert trial.value == max(metric, key=lambda m: m.step).value
        assert {k: str(v) for k, v in trial.params.items()} == {
            k: run.data.params[k] for k in trial.params}
    assert study.user_attrs["mlflow.parent_run_id"] == parent.info.run_id
    # Each trial run's Datasets panel: the data set, its manifest hash, its split sizes.
    for run in children:
        (given,) = run.inputs.dataset_inputs
        assert (given.dataset.name, given.dataset.source_type) == ("glyphs", "code")
        profile = json.loads(given.dataset.profile)
        assert profile["content_hash"].startswith(given.dataset.digest)
        assert len(given.dataset.digest) == 36
        assert profile["splits"]["target"]["classes"] == cfg.dataset.num_target_classes


def test_a_diverging_trial_is_marked_and_the_study_completes(tmp_path, local_ray):
    cfg = tiny_study(tmp_path, name="diverge",
                     search={"sampler": "grid", "num_samples": None},
                     space={"lr": {"type": "categorical", "values": [1000.0, 0.05]}},
                     training={"epochs": 3})
    state = run_study(cfg, report=False)
    assert state.status == "completed"
    client = MlflowClient(state.tracking_uri)
    _, _, children = children_of(client, "diverge")
    status = {float(r.data.params["lr"]): r.data.tags["nctune.status"] for r in children}
    assert status == {1000.0: "diverged", 0.05: "completed"}

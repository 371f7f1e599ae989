"""study.run.compact on real Ray Tune trial records, and benchmarks/driver_scaling.py end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ray.train import Checkpoint, CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.trainable.metadata import _TrainingRunMetadata
from ray.util import debug

from study.run.compact import (
    ENCODER_LOG_ONCE,
    CompactFinishedTrials,
    StepWindows,
    compact_trial,
)
from study.run.state import StudyState
from study.run.tracking import end_status
from study.run.tuner import study_callbacks
from tests.study.studies import tiny_study

ROOT = Path(__file__).resolve().parents[2]
SEARCHED = "fewshot/5w5s/ncc/acc"
DROPPED = ["source/train_loss", "cdnv/target", "layer/layer1/cdnv/target", "time/train_s"]


def finished_trial(folder: Path) -> Trial:
    """A Tune trial record that received two epochs' results, each with a checkpoint, as the
    controller records them."""
    trial = Trial("pretrain", stub=True, config={"epochs": 2})
    trial.run_metadata.checkpoint_manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    for epoch in (1, 2):
        result = {"epoch": epoch, "training_iteration": epoch, "time_total_s": 1.5 * epoch,
                  "trial_status": "completed" if epoch == 2 else "running", "node_id": "n1",
                  "config": {"epochs": 2, "lr": 0.1}, "experiment_tag": "1_epochs=2,lr=0.1",
                  SEARCHED: 0.4 + 0.1 * epoch, **{k: float(epoch) for k in DROPPED}}
        trial.update_last_result(result)
        (folder / f"checkpoint_{epoch}").mkdir()
        saved = _TrainingResult(Checkpoint(str(folder / f"checkpoint_{epoch}")), dict(result))
        trial.run_metadata.checkpoint_manager.register_checkpoint(saved)
    return trial


def test_an_ended_trial_keeps_what_tune_and_a_resume_read_and_drops_the_rest(
        tmp_path: Path) -> None:
    trial = finished_trial(tmp_path)
    status = end_status(trial)
    full_json = trial.run_metadata.get_json_state()
    CompactFinishedTrials([SEARCHED]).on_trial_complete(0, [trial], trial)
    meta = trial.run_metadata
    for key in DROPPED:
        assert key not in trial.last_result and key not in meta.metric_analysis
        assert key not in meta.metric_n_steps
    assert trial.last_result[SEARCHED] == pytest.approx(0.6)
    assert meta.metric_analysis[SEARCHED]["max"] == pytest.approx(0.6)
    assert trial.last_result["epoch"] == 2 and trial.last_result["node_id"] == "n1"
    assert trial.last_result["time_total_s"] == 3.0  # Tune's own keys stay in the last result
    # only the search metric's summary stays (what ExperimentAnalysis.get_best_trial reads),
    # with the windows' means
    assert set(meta.metric_analysis) == {SEARCHED}
    assert meta.metric_analysis[SEARCHED]["last-5-avg"] == pytest.approx(0.55)
    assert isinstance(meta.metric_n_steps, StepWindows) and not meta.metric_n_steps
    # Tune's copies of the trial's config and tag go; the trial's own record keeps them
    assert "config" not in trial.last_result and "experiment_tag" not in trial.last_result
    assert trial.config == {"epochs": 2}
    assert end_status(trial) == status == "completed"
    kept = trial.run_metadata.checkpoint_manager._checkpoint_results
    assert [r.metrics["epoch"] for r in kept] == [1, 2]
    # a kept checkpoint keeps what a restore from it reads, and the search metric
    assert all(set(r.metrics) == {SEARCHED, "epoch", "training_iteration", "time_total_s",
                                  "trial_status"} for r in kept)
    assert [(r.metrics["training_iteration"], r.metrics["time_total_s"]) for r in kept] == [
        (1, 1.5), (2, 3.0)]
    assert trial.run_metadata.checkpoint_manager.latest_checkpoint_result is kept[-1]
    # The snapshot Tune writes next is rebuilt from the compact record, and restores to it.
    compact_json = meta.get_json_state()
    assert len(compact_json) < len(full_json) and "\n" not in compact_json
    assert all(key in full_json and key not in compact_json for key in DROPPED)
    restored = _TrainingRunMetadata.from_json_state(compact_json)
    assert restored.last_result == trial.last_result
    assert restored.metric_analysis == meta.metric_analysis
    assert restored.metric_n_steps == {}
    restored_kept = restored.checkpoint_manager._checkpoint_results
    assert [r.metrics for r in restored_kept] == [r.metrics for r in kept]


def test_the_compact_json_is_what_tune_would_write_less_the_indentation(
        tmp_path: Path) -> None:
    """The cached JSON is Tune's own, re-indented: same record, fewer characters."""
    trial = finished_trial(tmp_path)
    compact_trial(trial, lambda key: key in DROPPED)
    meta = trial.run_metadata
    compact = meta.get_json_state()
    meta.invalidate_cache()
    tunes = meta.get_json_state()
    assert tunes != compact and json.loads(tunes) == json.loads(compact)
    assert len(compact) < len(tunes)


def test_a_result_after_compaction_is_tracked_again_without_error(tmp_path: Path) -> None:
    """A dropped key that comes back (never for an ended trial, but cheap to be sure of)."""
    trial = finished_trial(tmp_path)
    compact_trial(trial, lambda key: key in DROPPED)
    trial.update_last_result({"epoch": 3, "training_iteration": 3, "cdnv/target": 9.0})
    assert trial.run_metadata.metric_analysis["cdnv/target"]["last"] == 9.0
    # A kept key's windows were dropped: they restart from the new value
    assert trial.run_metadata.metric_analysis["epoch"]["max"] == 3
    assert trial.run_metadata.metric_analysis["epoch"]["last-5-avg"] == 3.0
    assert list(trial.run_metadata.metric_n_steps["epoch"]["10"]) == [3]


def test_the_encoder_log_once_entries_are_cleared(tmp_path: Path) -> None:
    """Ray's JSON encoder remembers the text of every deque it fell back on; they go."""
    trial = finished_trial(tmp_path)
    trial.run_metadata.get_json_state()
    assert any(str(k).startswith(ENCODER_LOG_ONCE) for k in debug._logged)
    CompactFinishedTrials([SEARCHED]).on_trial_complete(0, [trial], trial)
    assert not any(str(k).startswith(ENCODER_LOG_ONCE) for k in debug._logged)


def test_the_compactor_runs_after_every_other_study_callback(tmp_path: Path) -> None:
    """Callbacks before it, a benchmark's too, see an ended trial's whole last result."""
    cfg = tiny_study(tmp_path)
    state = StudyState(name=cfg.name, status="running", tracking_uri="sqlite:///x.db",
                       experiment="nctune", experiment_id="1", parent_run_id="p",
                       ray_path=str(tmp_path), created="now", num_samples=3,
                       metric=SEARCHED, mode="max")
    extra = Callback()
    callbacks = study_callbacks(cfg, state, [extra])
    assert isinstance(callbacks[-1], CompactFinishedTrials) and callbacks[-2] is extra
    assert callbacks[-1].keep == frozenset(cfg.search.metrics())
    assert callbacks[-1].searched == frozenset(cfg.searched()) != frozenset()


def test_an_ended_trial_keeps_its_searched_config_and_a_short_tag(tmp_path: Path) -> None:
    """The constants leave Tune's record (params.json, MLflow, config.yaml keep them); what
    the driver reads after the end stays, and a resume restores the small record."""
    trial = finished_trial(tmp_path)
    trial.config.update({"lr": 0.1, "backbone": "resnet18", "dataset": "glyphs"})
    trial.experiment_tag = "7_backbone=resnet18,dataset=glyphs,epochs=2,lr=0.1000"
    status = end_status(trial)
    CompactFinishedTrials([SEARCHED], ["lr"]).on_trial_complete(0, [trial], trial)
    assert trial.config == {"epochs": 2, "lr": 0.1}
    assert trial.experiment_tag == "7_lr=0.1000"
    assert end_status(trial) == status == "completed"
    # the snapshot's record, which a resume restores the trial from (real resumes of
    # compacted trials: tests/study/test_reliability_kill.py)
    state = json.loads(trial.get_json_state()[0])
    assert state["config"] == state["_Trial__unresolved_config"] == {"epochs": 2, "lr": 0.1}
    assert state["experiment_tag"] == "7_lr=0.1000" and state["trial_id"] == trial.trial_id


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_driver_scaling_benchmark_runs_quick(tmp_path: Path) -> None:
    """benchmarks/driver_scaling.py --quick --compare end to end (so it cannot rot)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "driver_scaling.py"), "--quick", "--compare"],
        capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for study in (out["study"], out["before_fixes"]):
        assert study["trials"] == 6
        assert 0 < study["own_s_mean"] <= study["cycle_s_mean"]
        assert study["bytes_per_trial"]["mlflow"] > 0
        assert study["store_bytes_end"]["optuna"] > 0 and study["store_bytes_end"]["ray"] > 0
    assert out["bare_trial_s"] > 0 and out["tune_over_bare"] > 0
    assert set(out["goals_met"]) == {"overhead_le_1s", "memory_flat"}

"""A killed or interrupted `nctune run` (a real subprocess, real signals) resumes to exactly the
study an uninterrupted run gives: num_samples completed trials, one MLflow run per trial, no
metric step duplicated or missing, the same configurations proposed in the same order, and no run
left RUNNING. Resumes run in this process (`nctune resume` through the CLI's main) on the
module's local Ray, which saves a Ray start and a worker start per scenario.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from study.cli import main
from study.run.driver import run_study
from tests.study.reliability import (
    Driver,
    audit,
    kill_study,
    live_results,
    optuna_audit,
    result_lines,
    study_runs,
    this_session,
    trial_run_count,
)

pytestmark = pytest.mark.slow

EPOCHS = 3


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, local_ray):
    """The same study run start to end: what every resumed one must equal."""
    root = tmp_path_factory.mktemp("baseline")
    cfg, _ = kill_study(root, "base")
    state = run_study(cfg, report=False)
    assert state.status == "completed"
    return audit(cfg, state.tracking_uri)


def kill_when(point: str, driver: Driver, name: str) -> Callable[[], bool]:
    """When to SIGKILL the driver, from what it has written (results, trial runs)."""
    root = driver.cwd
    db = root / "mlflow.db"

    def results() -> list[dict]:
        return live_results(Path(driver.temp), name)

    def before_any_trial() -> bool:  # the parent run exists; Ray is starting, Tune saved nothing
        return "Ray: local" in driver.output()

    def before_first_report() -> bool:  # a trial's run exists, its worker is still starting
        return trial_run_count(db) >= 1 and not results()

    def mid_trial() -> bool:
        """The first trial has reported epoch 2 of 3 and Tune has saved that: its snapshot of
        result.json under ray/ (copied only with a snapshot, here the one Tune forces at a
        trial's second checkpoint) shows it. The trial resumes from epoch 2's checkpoint."""
        saved = [r.get("epoch") for r in result_lines(root / "ray" / name)]
        return saved == [1, 2] and len(results()) == 2

    def second_trial_reported() -> bool:  # one trial ended, the next reported an epoch
        done = results()
        ended = {r["trial_id"] for r in done if r.get("epoch") == EPOCHS}
        return len(ended) == 1 and any(r["trial_id"] not in ended for r in done)

    def between_trials() -> bool:  # a trial has ended; the next one's run exists, unreported
        done = results()
        ended = {r["trial_id"] for r in done if r.get("epoch") == EPOCHS}
        return (len(ended) >= 1 and len(done) == EPOCHS * len(ended)
                and trial_run_count(db) == len(ended) + 1)

    return {"before_any_trial": before_any_trial, "before_first_report": before_first_report,
            "mid_trial": mid_trial,
            "between_trials": between_trials,
            "second_trial_reported": second_trial_reported}[point]


def resume(name: str, root: Path) -> int:
    return main(["resume", name, "--root", str(root), "--no-report"])


@pytest.mark.parametrize("point", ["before_any_trial", "before_first_report", "mid_trial",
                                   "between_trials"])
def test_sigkill_then_resume_gives_the_uninterrupted_study(point, tmp_path, local_ray,
                                                           uninterrupted, capfd):
    name = point.replace("_", "-")
    cfg, yaml_file = kill_study(tmp_path, name)
    driver = Driver(["run", str(yaml_file), "--no-report"], cwd=tmp_path)
    try:
        driver.wait_for(point, kill_when(point, driver, name))
        driver.signal(signal.SIGKILL)
        assert driver.wait() == -signal.SIGKILL
        before = live_results(Path(driver.temp), name)
    finally:
        strays = driver.stop()
    assert strays == [], f"processes of the killed driver still alive: {strays}"
    killed = audit(cfg, cfg.tracking_uri())
    assert killed["parent"] == ("RUNNING", "running")  # what a kill leaves behind
    at_kill = {"results_at_kill": len(before), "runs_at_kill": killed["child_runs"]}

    capfd.readouterr()
    assert resume(name, tmp_path) == 0
    captured = capfd.readouterr()
    out = captured.out
    assert "ERROR" not in captured.err and "Traceback" not in captured.err, captured.err
    got = audit(cfg, cfg.tracking_uri())
    resumed = [line for line in out.splitlines() if line.startswith("Resumed:")]
    # Tune copies a restored trial's old results into its new result.json: new pids only.
    ids, pids = {r["trial_id"] for r in before}, {r["pid"] for r in before}
    again = [r["epoch"] for r in live_results(this_session(), name)
             if r["trial_id"] in ids and r["pid"] not in pids]
    at_kill["first_epoch_reported_after_resume"] = min(again, default=None)
    print(json.dumps({"kill_point": point, **at_kill,
                      **{k: v for k, v in got.items() if k != "configs"}, "resume": resumed}))
    assert got["trials_completed"] == got["child_runs"] == cfg.num_samples
    assert got["duplicated_steps"] == got["missing_steps"] == 0
    assert got["runs_running"] == 0
    # The Optuna storage holds the same trials, each once (orphans proposed after Tune's last
    # snapshot are failed, never complete), and nothing left RUNNING.
    opt = optuna_audit(cfg, cfg.tracking_uri())
    print(json.dumps({"kill_point": point, **{k: v for k, v in opt.items() if "ids" not in k}}))
    assert opt["optuna_complete"] == cfg.num_samples and opt["optuna_running"] == 0
    assert opt["optuna_trial_ids"] == opt["mlflow_trial_ids"]
    assert opt["optuna_params_match_mlflow"]
    assert got["parent"] == ("FINISHED", "completed")
    # every stage's series (evaluation.layers: stages) was resumed without a duplicate step
    layer_keys = [k for k in cfg.metric_names() if k.startswith("layer/")]
    assert len(layer_keys) == 50 and got["layer_series"] == len(layer_keys) * cfg.num_samples
    # The restored searcher proposes exactly what the uninterrupted study proposed, in order:
    # nothing finished is proposed again, nothing is skipped.
    assert got["configs"] == uninterrupted["configs"]
    if point == "mid_trial":  # Tune had saved epoch 2's checkpoint: no restart from scratch
        assert at_kill["first_epoch_reported_after_resume"] >= 2
    state = json.loads((tmp_path / "studies" / name / "study.json").read_text())
    assert state["status"] == "completed"


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, local_ray, uninterrupted):
    cfg, yaml_file = kill_study(tmp_path, "ctrl-c")
    driver = Driver(["run", str(yaml_file), "--no-report"], cwd=tmp_path)
    try:
        driver.wait_for("mid-trial", kill_when("second_trial_reported", driver, "ctrl-c"))
        driver.signal(signal.SIGINT, group=True)  # what a terminal's Ctrl-C does
        code = driver.wait(timeout=120)
    finally:
        strays = driver.stop()
    out = driver.output()
    assert strays == []
    assert code == 130, out
    assert "Traceback" not in out
    assert out.rstrip().splitlines()[-1].strip() == f"nctune resume ctrl-c --root {tmp_path}"
    state = json.loads((tmp_path / "studies" / "ctrl-c" / "study.json").read_text())
    assert (state["status"], state["stop_reason"]) == ("stopped", "interrupted")
    parent, children = study_runs(cfg.tracking_uri(), "ctrl-c")
    assert (parent.info.status, parent.data.tags["nctune.status"]) == ("KILLED", "stopped")
    assert [r.info.status for r in children] == ["FINISHED", "KILLED"]  # none left RUNNING
    assert [r.data.tags["nctune.status"] for r in children] == ["completed", "stopped"]

    assert resume("ctrl-c", tmp_path) == 0
    got = audit(cfg, cfg.tracking_uri())
    assert got["trials_completed"] == got["child_runs"] == cfg.num_samples
    assert got["duplicated_steps"] == got["missing_steps"] == got["runs_running"] == 0
    assert got["configs"] == uninterrupted["configs"]

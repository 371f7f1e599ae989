"""Safe defaults that need no Ray: study names cannot leave the studies folder, one driver per
study, credentials never printed, checkpoints never run code, bad input exits 2 with one line.
(That a local Ray listens on 127.0.0.1 only, dashboard off, token auth on, is checked in
test_reliability_trials.py, which runs one.)"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from study.cli import main
from study.run.guard import StudyLock, check_study_name, redact, redact_text
from study.run.state import StudyState
from tests.study.reliability import kill_study
from trainables.checkpoint import FILENAME, load_checkpoint

SECRET_URI = "postgresql://bob:hunter2@db.example:5432/mlflow"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("nctune: error: ")
    return err


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", ".hidden", "", "x" * 65, "a b"])
def test_study_names_that_are_paths_are_refused(name, tmp_path, capsys):
    with pytest.raises(ValueError, match="not allowed"):
        check_study_name(name)
    for command in (["resume", name], ["show", name]):
        assert main([*command, "--root", str(tmp_path)]) == 2
        assert "not allowed" in one_error_line(capsys)


def test_run_refuses_a_path_as_study_name(tmp_path, capsys):
    _, yaml_file = kill_study(tmp_path, "fine")
    assert main(["run", str(yaml_file), "--name", "../../etc", "--dry-run"]) == 2
    assert "name" in one_error_line(capsys)


def saved_study(root: Path, name: str, status: str) -> Path:
    folder = root / "studies" / name
    folder.mkdir(parents=True)
    StudyState(name=name, status=status, tracking_uri=f"sqlite:///{root}/mlflow.db",
               experiment="nctune", experiment_id="0", parent_run_id="x",
               ray_path=str(root / "ray"), created="2026-01-01T00:00:00", num_samples=2,
               metric="source/test_acc", mode="max").save(folder)
    return folder


def test_resume_while_the_study_runs_is_refused(tmp_path, capsys):
    folder = saved_study(tmp_path, "busy", "running")
    with StudyLock(folder, "busy"):  # what a live driver holds
        assert main(["resume", "busy", "--root", str(tmp_path)]) == 2
    assert "running in another process" in one_error_line(capsys)


def test_ls_tells_a_killed_study_from_a_running_one(tmp_path, capsys):
    folder = saved_study(tmp_path, "alive", "running")
    saved_study(tmp_path, "killed", "running")
    with StudyLock(folder, "alive"):
        assert main(["ls", "--root", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "no driver" not in rows["alive"] and "running" in rows["alive"]
    assert "running (no driver: resume it)" in rows["killed"]


def test_resume_of_a_completed_study_changes_nothing(tmp_path, capsys):
    folder = saved_study(tmp_path, "done", "completed")
    before = (folder / "study.json").read_text()
    assert main(["resume", "done", "--root", str(tmp_path)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert (folder / "study.json").read_text() == before


def test_credentials_are_masked_wherever_a_uri_is_printed(tmp_path, capsys):
    assert redact(SECRET_URI) == "postgresql://***@db.example:5432/mlflow"
    assert redact("sqlite:////a/b.db") == "sqlite:////a/b.db"
    text = f"could not reach {SECRET_URI}: bob denied (password hunter2)"
    masked = redact_text(text, SECRET_URI)
    assert "hunter2" not in masked and "bob" not in masked
    _, yaml_file = kill_study(tmp_path, "secret")
    assert main(["run", str(yaml_file), "--set", f"tracking.uri={SECRET_URI}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "uri: postgresql://***@db.example:5432/mlflow" in out and "hunter2" not in out


def test_study_state_is_readable_by_its_owner_only(tmp_path):
    """study.json keeps the tracking URI as given, credentials included, for `resume`."""
    folder = tmp_path / "studies" / "secret"
    folder.mkdir(parents=True)
    (folder / "study.json.tmp").write_text("left over")
    (folder / "study.json.tmp").chmod(0o644)
    state = StudyState(name="secret", status="running", tracking_uri=SECRET_URI,
                       experiment="nctune", experiment_id="0", parent_run_id="x",
                       ray_path=str(tmp_path / "ray"), created="2026-01-01T00:00:00",
                       num_samples=2, metric="source/test_acc", mode="max")
    state.save(folder)
    assert (folder / "study.json").stat().st_mode & 0o777 == 0o600
    assert not (folder / "study.json.tmp").exists()
    assert StudyState.load(folder) == state


class Payload:
    """A pickle that runs code when loaded: what a tampered checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "epoch": 1, "evil": Payload(marker)}, tmp_path / FILENAME)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path)
    assert not marker.exists()

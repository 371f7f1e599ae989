"""Helpers for the reliability tests: a `nctune run` subprocess we can kill, and what MLflow holds.

Every driver runs in its own session with its own Ray temp dir, so the processes a test kills and
then checks for are exactly the ones it started (other developers run Ray on this machine too;
`ray stop` would kill theirs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from mlflow.tracking import MlflowClient

from study.config import StudyConfig
from study.presets import dump_config
from tests.study.studies import tiny_study

ROOT = Path(__file__).resolve().parents[2]


def kill_study(root: Path, name: str, **sections: Any) -> tuple[StudyConfig, Path]:
    """The tiny study made deterministic (one trial at a time, seed 0), written as YAML.

    Batches of 2 over 240 images make an epoch last ~0.4 s here instead of ~0.05 s: long
    enough for a test polling every 50 ms to kill at a chosen point (before a trial's first
    report, after its first epoch), short enough that four trials take seconds.
    """
    search = {"num_samples": 4, "max_concurrent": 1, "seed": 0, **sections.pop("search", {})}
    training = {"epochs": 3, "batch_size": 2, "device": "cpu", **sections.pop("training", {})}
    dataset = {"source_train_per_class": 30, **sections.pop("dataset", {})}
    cfg = tiny_study(root, name=name, search=search, training=training, dataset=dataset,
                     **sections)
    path = root / f"{name}.yaml"
    path.write_text(dump_config(cfg))
    return cfg, path


class Driver:
    """`python -m study.cli run FILE` in its own session; its Ray lives in that session too."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        # Short: Ray's Unix socket paths live under it and must stay under ~107 bytes.
        self.temp = tempfile.mkdtemp(prefix="nctr-", dir="/tmp")
        self.log = Path(tempfile.mkstemp(prefix="driver-", suffix=".log", dir=cwd)[1])
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": self.temp,
                    "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        full_env.pop("RAY_ADDRESS", None)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=cwd,
                                         env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.sid = self.proc.pid
        self.cwd = cwd

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, what: str, cond: Callable[[], bool], timeout: float = 300) -> None:
        """Poll `cond` every 50 ms; fail with the driver's output if it exits or times out."""
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                raise AssertionError(f"driver exited ({self.proc.returncode}) before {what}:\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")
            time.sleep(0.05)

    def signal(self, sig: int, group: bool = False) -> None:
        if group:
            os.killpg(self.sid, sig)
        else:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def processes(self) -> list[psutil.Process]:
        """Live (not zombie) processes of this driver's session or naming its Ray temp dir."""
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                mine = os.getsid(proc.pid) == self.sid
                if mine or self.temp in " ".join(proc.info["cmdline"] or []):
                    found.append(proc)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return found

    def stop(self) -> list[int]:
        """SIGKILL the whole session; returns the pids still alive 20 s later (must be none)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.sid, signal.SIGKILL)
        left = self.processes()
        for proc in left:
            proc.kill()
        _, alive = psutil.wait_procs(left, timeout=20)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        shutil.rmtree(self.temp, ignore_errors=True)
        return [p.pid for p in alive]


def live_results(session: Path, name: str) -> list[dict]:
    """Every result the driver has processed so far, in no particular order.

    Read from the driver's staging copy under the Ray session folder (`session` is a Ray temp
    dir or one session in it): Tune writes result.json there as results arrive, and copies it
    to the study's ray/ folder only with each experiment snapshot (seconds apart).
    """
    pattern = f"artifacts/*/{name}/driver_artifacts"
    folders = {f.resolve() for prefix in ("", "session_*/", "ray/session_*/")
               for f in session.glob(prefix + pattern)}  # session_latest links to one of them
    return [r for folder in folders for r in result_lines(folder)]


def this_session() -> Path:
    """The Ray session folder of this process's Ray (for live_results of in-process studies)."""
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path())


def result_lines(experiment: Path) -> list[dict]:
    """Every result in the result.json files of the trial folders under `experiment`."""
    out = []
    for path in experiment.glob("t*/result.json"):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                continue
    return out


def trial_run_count(db: Path) -> int:
    """Child runs in the sqlite store, read-only (the driver is writing)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute("select count(*) from tags where key = 'nctune.role' "
                              "and value = 'trial'").fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0


def study_runs(uri: str, name: str) -> tuple[Any, list[Any]]:
    """(parent run, active child runs sorted by trial index) of study `name`."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("nctune")
    parents = client.search_runs([exp.experiment_id],
                                 f"tags.`nctune.role` = 'study' and tags.`nctune.study` = '{name}'")
    assert len(parents) == 1, [p.info.run_name for p in parents]
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    return parents[0], sorted(children, key=lambda r: int(r.data.tags["nctune.trial_index"]))


def audit(cfg: StudyConfig, uri: str) -> dict[str, Any]:
    """What the issue asks per scenario: trials completed, child runs, duplicated and missing
    steps over every metric of every run, and the configurations in proposal order."""
    client = MlflowClient(uri)
    parent, children = study_runs(uri, cfg.name)
    expected = range(1, cfg.training.epochs + 1)
    duplicated = missing = layer_series = 0
    for run in children:
        for key in cfg.metric_names():
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            duplicated += len(steps) - len(set(steps))
            missing += len(set(expected) - set(steps))
            layer_series += key.startswith("layer/") and sorted(steps) == list(expected)
    return {
        "trials_completed": sum(r.data.tags["nctune.status"] == "completed" for r in children),
        "child_runs": len(children),
        "duplicated_steps": duplicated,
        "missing_steps": missing,
        # per-tap series (evaluation.layers) with exactly one value per epoch
        "layer_series": layer_series,
        "runs_running": sum(r.info.status == "RUNNING" for r in children),
        "parent": (parent.info.status, parent.data.tags["nctune.status"]),
        "configs": [tuple(r.data.params.get(k) for k in cfg.searched()) for r in children],
    }


def optuna_audit(cfg: StudyConfig, uri: str) -> dict[str, Any]:
    """What the study's Optuna storage holds, set against its MLflow runs: complete trials, the
    Tune trial ids of those (MLflow's `nctune.trial_id` tags must be the same set) and whether
    each complete trial's parameters equal its MLflow run's."""
    import optuna

    from study.run.optuna_store import TRIAL_ID_ATTR, storage_url

    study = optuna.load_study(study_name=cfg.name, storage=storage_url(cfg))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    _, children = study_runs(uri, cfg.name)
    runs = {r.data.tags["nctune.trial_id"]: r for r in children}
    ids = [t.user_attrs.get(TRIAL_ID_ATTR) for t in complete]
    same_params = all(
        tid in runs and all(runs[tid].data.params.get(k) == str(v) for k, v in t.params.items())
        for tid, t in zip(ids, complete, strict=True))
    return {"optuna_complete": len(complete), "optuna_trial_ids": sorted(map(str, ids)),
            "mlflow_trial_ids": sorted(runs), "optuna_params_match_mlflow": same_params,
            "optuna_running": len(study.get_trials(states=(optuna.trial.TrialState.RUNNING,)))}


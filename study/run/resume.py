"""After a stop, a Ctrl-C or a kill: make MLflow agree with the restored Tune state again.

Tune restores trials and the searcher from its last experiment snapshot, which can lag the moment
the driver died by a few seconds (it is taken every ~10 s, and whenever a trial has checkpointed
twice since the last one). MLflow, written as results arrive, can hold more than the snapshot:

* a run of a trial the snapshot never recorded (proposed after it): the searcher, restored to
  before that proposal, proposes the same configuration again as a new trial; the orphan run is
  deleted, so the study keeps exactly one run per trial;
* a run still RUNNING whose trial the snapshot holds as ended (terminated or errored): it is
  ended with the trial's status, never left RUNNING;
* a run the snapshot's callback state lacks (created after the snapshot) for a trial it knows:
  adopted, so the restarted trial continues that run instead of opening a second one.

Steps are never duplicated whatever the snapshot says: the callback re-reads each run's last
logged step from MLflow before logging the first result after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from mlflow.tracking import MlflowClient

from analysis.crosstrial import store
from study.run.tracking import child_runs, end_status, finish_run, flat_params, retry, trial_error


class TrialRuns(Protocol):
    """The trial -> run bookkeeping a resume rebuilds (study.run.trial_logger.MLflowTrialLogger)."""

    experiment_id: str
    parent_run_id: str
    runs: dict[str, str]
    index: dict[str, int]
    last_step: dict[str, int]
    status: dict[str, str]

    @property
    def client(self) -> MlflowClient:
        """The tracking client."""
        ...


LOST_ERROR = "the trial failed; its error was not recorded before the driver stopped"


@dataclass
class Reconciled:
    """What a resume changed in MLflow, for the line the driver prints."""

    adopted: int = 0
    ended: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line: how many runs continue, which were ended or removed."""
        parts = [f"{self.adopted} trial run(s) continue"]
        if self.ended:
            parts.append(f"ended {len(self.ended)} run(s) left RUNNING: {', '.join(self.ended)}")
        if self.removed:
            parts.append(f"removed {len(self.removed)} run(s) of trials the saved state had not "
                         f"recorded yet ({', '.join(self.removed)}); they run again with the "
                         "same configuration")
        return "Resumed: " + "; ".join(parts)


def ended_as(trial: Any) -> tuple[str, str | None] | None:
    """(status, error) of a trial Tune will not run again; None if it will run (again)."""
    if trial.status == "ERROR":
        return "failed", trial_error(trial) or LOST_ERROR
    if trial.status == "TERMINATED":
        return end_status(trial), None
    return None


def reconcile(tracker: TrialRuns, trials: list) -> Reconciled:
    """Rebuild the tracker's trial -> run map from MLflow for the restored `trials`."""
    client = tracker.client
    known = {t.trial_id: t for t in trials}
    found = retry(lambda: child_runs(client, tracker.experiment_id, tracker.parent_run_id))
    done = Reconciled()
    runs: dict[str, str] = {}
    index: dict[str, int] = {}
    for run in found:
        tid = run.data.tags.get(store.TAG_TRIAL_ID, "")
        run_id = run.info.run_id
        if tid not in known or tid in runs:  # never recorded, or a second run of one trial
            retry(partial(client.delete_run, run_id))
            done.removed.append(run.info.run_name or run_id)
            continue
        runs[tid] = run_id
        index[tid] = int(run.data.tags.get(store.TAG_TRIAL_INDEX, "0"))
        trial = known[tid]
        if not run.data.params:  # the driver died between creating the run and its params
            retry(partial(client.log_batch, run_id, params=flat_params(trial.config)))
        ended = ended_as(trial)
        status = run.data.tags.get(store.TAG_STATUS, "running")
        if ended is None:
            done.adopted += 1
            tracker.status.pop(tid, None)
        elif run.info.status == "RUNNING" or status == "running":
            finish_run(client, run_id, *ended)
            tracker.status[tid] = ended[0]
            done.ended.append(run.info.run_name or run_id)
        else:
            tracker.status[tid] = status
    tracker.runs, tracker.index = runs, index
    tracker.last_step = {t: s for t, s in tracker.last_step.items() if t in runs}
    print(done.describe(), flush=True)
    return done

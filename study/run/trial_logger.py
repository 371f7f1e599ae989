"""The Ray Tune callback that logs every trial to MLflow, on the driver.

Trials never talk to the tracking store; this callback does. That is what lets a cluster use the
embedded sqlite store on the head node, and why only one process ever writes to it (sqlite's
'database is locked' cannot arise from concurrent trials).

MLflow is the record of truth for what was logged: after a driver restart the callback re-reads,
per run, the last step it holds (so no step is logged twice) and study.run.resume matches runs to
the restored trials by their `nctune.trial_id` tag (so no trial gets a second run).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from analysis.contract import TRAIN_LOSS
from analysis.crosstrial import store
from study.run.resume import reconcile
from study.run.tracking import (
    TrackingUnavailable,
    end_status,
    finish_run,
    finite_metrics,
    flat_params,
    retry,
    run_name,
    trial_error,
)


class MLflowTrialLogger(Callback):
    """Logs every trial as a child run of the study's parent run; resumable without duplicates.

    Its state (trial id -> run id, index, last logged step) is saved with the Tune experiment;
    after a restore, study.run.resume reconciles it with MLflow before the first trial restarts.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, study: str,
                 searched: list[str], dataset: dict[str, str] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self.searched = searched
        self.dataset = dataset or {}
        self.runs: dict[str, str] = {}
        self.index: dict[str, int] = {}
        self.last_step: dict[str, int] = {}
        self.status: dict[str, str] = {}
        self.down = False  # the store failed for the whole retry budget: stop writing
        self.restored = False  # set_state ran: reconcile with MLflow before the first step
        self._client: MlflowClient | None = None
        self._checked: set[str] = set()

    def label(self, tid: str) -> str:
        """The trial's short name, `t007`, shared by the terminal and MLflow run names."""
        return f"t{self.index.get(tid, 0):03d}"

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the experiment; a live client does not pickle.
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, made lazily: the callback is pickled with Tune's state, a client is
        not."""
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ---- Tune hooks -------------------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Tune hook: on the first step after a restore, reconcile MLflow with the restored trials.
        """
        if self.restored:
            self.restored = False
            self._guard(lambda: reconcile(self, trials))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: open the trial's child run (or continue the one it has)."""
        self._guard(lambda: self._start(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        """Tune hook: log the result's contract metrics at step = epoch, never a step twice."""
        self._guard(lambda: self._result(trial, result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: end the trial's run with its status (completed, diverged, or failed with its
        error)."""
        status = self.status.get(trial.trial_id) or end_status(trial)
        error = (trial.last_result or {}).get("error") if status == "failed" else None
        self._guard(lambda: self._finish(trial.trial_id, status, error=error))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: end the trial's run as failed, with its error as a tag."""
        text = trial_error(trial) or "unknown error"
        self._guard(lambda: self._finish(trial.trial_id, "failed", error=text))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Tune hook: end as stopped the runs of trials Tune ended without completing them."""
        for trial in trials:  # trials Tune ended without a completion (e.g. a stop)
            if trial.trial_id in self.runs and trial.trial_id not in self.status:
                self._guard(partial(self._finish, trial.trial_id, "stopped"))

    # ---- state --------------------------------------------------------------------------------
    def get_state(self) -> dict | None:
        """What Tune snapshots with the experiment: trial -> run map, indices, last steps, statuses.
        """
        return {"runs": dict(self.runs), "index": dict(self.index),
                "last_step": dict(self.last_step), "status": dict(self.status)}

    def set_state(self, state: dict) -> None:
        """Restore that snapshot; each run's last step is re-read from MLflow before it is logged to
        again."""
        self.runs = dict(state.get("runs", {}))
        self.index = dict(state.get("index", {}))
        self.last_step = dict(state.get("last_step", {}))
        self.status = dict(state.get("status", {}))
        self._checked = set()
        self.restored = True

    # ---- the work -----------------------------------------------------------------------------
    def _guard(self, fn: Callable[[], object]) -> None:
        """Once the store is down for good, stop writing (Tune's clean-up must not hang on it)."""
        if self.down:
            return
        try:
            fn()
        except TrackingUnavailable:
            self.down = True
            raise

    def _start(self, trial: Any) -> None:
        tid = trial.trial_id
        if tid in self.runs:  # a restored or retried trial continues its run
            self.status.pop(tid, None)
            retry(lambda: self.client.update_run(self.runs[tid], status="RUNNING"))
            retry(lambda: self.client.set_tag(self.runs[tid], store.TAG_STATUS, "running"))
            return
        self.index[tid] = max(self.index.values(), default=0) + 1
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            store.TAG_STUDY: self.study,
            store.TAG_ROLE: store.ROLE_TRIAL,
            store.TAG_TRIAL_ID: tid,
            store.TAG_TRIAL_INDEX: str(self.index[tid]),
            store.TAG_STATUS: "running",
        }
        name = run_name(self.index[tid], trial.config, self.searched)
        run = retry(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags))
        run_id = run.info.run_id
        self.runs[tid] = run_id
        self.last_step[tid] = 0
        self._checked.add(tid)
        params = flat_params(trial.config)  # < 100 keys: one batch
        retry(lambda: self.client.log_batch(run_id, params=params))
        inputs = dataset_inputs(getattr(self, "dataset", {}))
        if inputs:
            retry(lambda: self.client.log_inputs(run_id, datasets=inputs))

    def _result(self, trial: Any, result: dict) -> None:
        tid = trial.trial_id
        if tid not in self.runs:
            return
        if result.get("trial_status") in ("diverged", "failed"):
            self.status[tid] = str(result["trial_status"])
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= self._logged_step(tid):
            return  # logged before a restart or a retry: never duplicate a step
        metrics = finite_metrics(result, step)
        if metrics:
            retry(lambda: self.client.log_batch(self.runs[tid], metrics=metrics))
        self.last_step[tid] = step

    def _logged_step(self, tid: str) -> int:
        """The last logged step; after a driver restart, re-read it from the store once."""
        if tid not in self._checked:
            history = retry(lambda: self.client.get_metric_history(self.runs[tid],
                                                                   TRAIN_LOSS))
            stored = max((m.step for m in history), default=0)
            self.last_step[tid] = stored
            self._checked.add(tid)
        return self.last_step.get(tid, 0)

    def _finish(self, tid: str, status: str, error: str | None = None) -> None:
        if tid not in self.runs:
            return
        self.status[tid] = status
        finish_run(self.client, self.runs[tid], status, error)


def dataset_inputs(dataset: dict[str, str]) -> list[DatasetInput]:
    """The study's data set as an MLflow dataset input (study.run.state.dataset_input builds it)."""
    if not dataset:
        return []
    entity = Dataset(name=dataset["name"], digest=dataset["digest"],
                     source_type=dataset["source_type"], source=dataset["source"],
                     profile=dataset.get("profile"))
    return [DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])]


"""MLflow tracking from the driver: one parent run per study, one nested child run per trial.

Trials never talk to the tracking store; this Ray Tune callback does, on the driver. That is what
lets a cluster use the embedded sqlite store on the head node, and why only one process ever
writes to it (sqlite's 'database is locked' cannot arise from concurrent trials).

MLflow is the record of truth for what was logged: after a driver restart the callback re-reads,
per run, the last step it holds (so no step is logged twice) and study.resume matches runs to the
restored trials by their `nctune.trial_id` tag (so no trial gets a second run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

T = TypeVar("T")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
log = logging.getLogger(__name__)

# Short aliases that make child run names tell trials apart at a glance in the MLflow UI.
RUN_NAME_ALIASES = {
    "weight_decay": "wd", "label_smoothing": "ls", "width": "w", "dropout": "do",
    "drop_path": "dp", "epochs": "ep", "lr": "lr", "num_source_classes": "src",
    "mixup_alpha": "mix", "aug_strength": "aug", "batch_size": "bs", "seed": "seed",
    "source_train_per_class": "ipc",
}
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
STATUS_TO_MLFLOW = {"completed": "FINISHED", "diverged": "FINISHED", "stopped": "KILLED",
                    "failed": "FAILED"}
# Seconds of back-off a tracking call may spend before the study stops cleanly (resumable).
RETRY_ENV = "NCTUNE_TRACKING_RETRY_S"
DEFAULT_RETRY_S = 120.0


class TrackingUnavailable(RuntimeError):
    """The tracking store kept failing for the whole retry budget; the study stops cleanly."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a server error, a dropped connection, a locked database.

    A client error (bad parameter, missing run, no permission) is a bug or a configuration
    problem that waiting does not fix; it is raised at once.
    """
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(exc, OSError | TimeoutError) or "locked" in str(exc)


def retry(fn: Callable[[], T], *, budget_s: float | None = None, first_wait: float = 0.5) -> T:
    """Call `fn`, retrying transient failures with exponential backoff (0.5 s, 1 s, 2 s, ... at
    most 30 s apart) until `budget_s` seconds (default $NCTUNE_TRACKING_RETRY_S or 120) of waiting
    are spent; then raise TrackingUnavailable from the last error."""
    budget = float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S)) if budget_s is None else budget_s
    wait, waited = first_wait, 0.0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if waited >= budget:
                raise TrackingUnavailable(f"the tracking store failed for {waited:.0f} s: "
                                          f"{first_line(str(exc))}") from exc
            log.info("tracking call failed (%s); retrying in %.1f s", first_line(str(exc)), wait)
            time.sleep(wait)
            waited += wait
            wait = min(wait * 2, 30.0, max(budget - waited, 0.1))


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Create the experiment once (the training-runs view, not MLflow 3's GenAI view)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for key, value in EXPERIMENT_KIND.items():
            if exp.tags.get(key) != value:
                client.set_experiment_tag(exp.experiment_id, key, value)
        return str(exp.experiment_id)
    location = artifact_root.as_uri() if artifact_root is not None else None
    return str(client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND))


def run_name(index: int, config: dict[str, Any], searched: list[str]) -> str:
    """`t007 wd=3e-4 ls=0.1 w=2`: the index and what differs between trials."""
    parts = [f"t{index:03d}"]
    for key in searched:
        value = config.get(key)
        text = short_number(value) if isinstance(value, float) else str(value)
        parts.append(f"{RUN_NAME_ALIASES.get(key, key)}={text}")
    return " ".join(parts)


def short_number(value: float) -> str:
    """Two significant digits, short: 0.00031 -> 3.1e-4, 0.12 -> 0.12, 2.0 -> 2, 25000 -> 2.5e4."""
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def flat_params(config: dict[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:6000]) for k, v in sorted(config.items())]


def finite_metrics(result: dict[str, Any], step: int) -> list[Metric]:
    """The contract metrics of one result: numeric, finite, with '/' in their names."""
    now = int(time.time() * 1000)
    out = []
    for key, value in result.items():
        if "/" not in key or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out.append(Metric(key, float(value), now, step))
    return out


def end_status(trial: Any) -> str:
    """How a trial that ended without an error ended: diverged, completed or stopped early."""
    last = trial.last_result or {}
    if last.get("trial_status") in ("diverged", "failed"):
        return str(last["trial_status"])
    done = int(last.get("epoch", 0))
    return "completed" if done >= int(trial.config.get("epochs", 0)) else "stopped"


def trial_error(trial: Any) -> str | None:
    """The trial's error trace: every failure Tune recorded, from the driver's copy of its error
    file (Trial.get_error reads the storage copy, which is synced later)."""
    path = trial.error_file
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    else:
        error = trial.get_error()
        text = str(error) if error else ""
    return ANSI.sub("", text) or None  # Ray colours the worker's name


def finish_run(client: MlflowClient, run_id: str, status: str, error: str | None = None) -> None:
    """Tag a child run with its nctune status (and error) and end it in the MLflow status."""
    tags = [RunTag("nctune.status", status)]
    if error:
        last = (error.strip().splitlines() or ["unknown error"])[-1]
        tags.append(RunTag("nctune.error", last[:500]))
        retry(lambda: client.log_text(run_id, error, "error.txt"))
    retry(lambda: client.log_batch(run_id, tags=tags))
    retry(lambda: client.set_terminated(run_id, STATUS_TO_MLFLOW[status]))


class MLflowTrialLogger(Callback):
    """Logs every trial as a child run of the study's parent run; resumable without duplicates.

    Its state (trial id -> run id, index, last logged step) is saved with the Tune experiment;
    after a restore, study.resume reconciles it with MLflow before the first trial restarts.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, study: str,
                 searched: list[str]) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self.searched = searched
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
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ---- Tune hooks -------------------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.restored:
            from study.resume import reconcile

            self.restored = False
            self._guard(lambda: reconcile(self, trials))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard(lambda: self._start(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._guard(lambda: self._result(trial, result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        status = self.status.get(trial.trial_id) or end_status(trial)
        error = (trial.last_result or {}).get("error") if status == "failed" else None
        self._guard(lambda: self._finish(trial.trial_id, status, error=error))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        text = trial_error(trial) or "unknown error"
        self._guard(lambda: self._finish(trial.trial_id, "failed", error=text))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:  # trials Tune ended without a completion (e.g. a stop)
            if trial.trial_id in self.runs and trial.trial_id not in self.status:
                self._guard(partial(self._finish, trial.trial_id, "stopped"))

    # ---- state --------------------------------------------------------------------------------
    def get_state(self) -> dict | None:
        return {"runs": dict(self.runs), "index": dict(self.index),
                "last_step": dict(self.last_step), "status": dict(self.status)}

    def set_state(self, state: dict) -> None:
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
            retry(lambda: self.client.set_tag(self.runs[tid], "nctune.status", "running"))
            return
        self.index[tid] = max(self.index.values(), default=0) + 1
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "nctune.study": self.study,
            "nctune.role": "trial",
            "nctune.trial_id": tid,
            "nctune.trial_index": str(self.index[tid]),
            "nctune.status": "running",
        }
        name = run_name(self.index[tid], trial.config, self.searched)
        run = retry(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags))
        run_id = run.info.run_id
        self.runs[tid] = run_id
        self.last_step[tid] = 0
        self._checked.add(tid)
        params = flat_params(trial.config)  # < 100 keys: one batch
        retry(lambda: self.client.log_batch(run_id, params=params))

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
                                                                   "source/train_loss"))
            stored = max((m.step for m in history), default=0)
            self.last_step[tid] = stored
            self._checked.add(tid)
        return self.last_step.get(tid, 0)

    def _finish(self, tid: str, status: str, error: str | None = None) -> None:
        if tid not in self.runs:
            return
        self.status[tid] = status
        finish_run(self.client, self.runs[tid], status, error)


def log_study_start(client: MlflowClient, experiment_id: str, study: str, description: str,
                    tags: dict[str, str], params: dict[str, Any],
                    artifacts: dict[str, str]) -> str:
    """Create the study's parent run with its config, space, manifest and code version."""
    run = client.create_run(experiment_id, run_name=study,
                            tags={"nctune.study": study, "nctune.role": "study",
                                  "nctune.status": "running",
                                  "mlflow.note.content": description,
                                  "nctune.question": description, **tags})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    for name, text in artifacts.items():
        client.log_text(run_id, text, name)
    return str(run_id)


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)

"""MLflow from the driver: the store's conventions and the calls every writer and reader shares.

One parent run per study (`nctune.role=study`), one nested child run per trial
(`nctune.role=trial`, `nctune.trial_id`), params = the flat trial config, metrics with
step = epoch. Every call goes through `retry`, the one back-off policy: a store that stays down
past its budget raises TrackingUnavailable and the study stops cleanly (resumable).

Who uses it: study.run.state (the parent run), study.run.trial_logger (the Tune callback that
logs the trials), study.run.resume (reconciling runs after a restart).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from analysis.contract import is_trial_metric
from analysis.crosstrial import store
from analysis.crosstrial.store import (  # noqa: F401  (re-exported: the one back-off policy)
    TAG_ERROR,
    TAG_QUESTION,
    TAG_ROLE,
    TAG_STATUS,
    TAG_STUDY,
    TrackingUnavailable,
    first_line,
    is_transient,
    retry,
)

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


def tracking_defaults() -> None:
    """Make `retry` the one back-off policy, and keep MLflow's own lines off the terminal.

    MLflow's REST client would otherwise retry a dead server for ~4 minutes per call, silently,
    before our budget even starts.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # MLflow prints a "View run at <server URL>" line per ended run: noise, and a URL that
    # would carry credentials if the tracking URI has them.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the summary's reads


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
    """A trial config as MLflow params, sorted (MLflow caps a value at 6000 characters)."""
    return [Param(k, str(v)[:6000]) for k, v in sorted(config.items())]


def finite_metrics(result: dict[str, Any], step: int) -> list[Metric]:
    """The contract metrics of one result (`analysis.contract.is_trial_metric`), finite ones."""
    now = int(time.time() * 1000)
    out = []
    for key, value in result.items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and is_trial_metric(key) and math.isfinite(value):
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
    tags = [RunTag(store.TAG_STATUS, status)]
    if error:
        last = (error.strip().splitlines() or ["unknown error"])[-1]
        tags.append(RunTag(store.TAG_ERROR, last[:500]))
        retry(lambda: client.log_text(run_id, error, "error.txt"))
    retry(lambda: client.log_batch(run_id, tags=tags))
    retry(lambda: client.set_terminated(run_id, STATUS_TO_MLFLOW[status]))


def log_study_start(client: MlflowClient, experiment_id: str, study: str, description: str,
                    tags: dict[str, str], params: dict[str, Any],
                    artifacts: dict[str, str]) -> str:
    """Create the study's parent run with its config, space, manifest and code version."""
    run = client.create_run(experiment_id, run_name=study,
                            tags={store.TAG_STUDY: study, store.TAG_ROLE: store.ROLE_STUDY,
                                  store.TAG_STATUS: "running",
                                  "mlflow.note.content": description,
                                  store.TAG_QUESTION: description, **tags})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    for name, text in artifacts.items():
        client.log_text(run_id, text, name)
    return str(run_id)


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """The study's trial runs (not deleted), oldest first."""
    query = (f"tags.mlflow.parentRunId = '{parent_run_id}' and "
             f"tags.`{store.TAG_ROLE}` = '{store.ROLE_TRIAL}'")
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def dump_json(obj: Any) -> str:
    """JSON for an artifact: indented, sorted keys, anything else as its str()."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str)

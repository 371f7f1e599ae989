"""The store's layout, owned here and nowhere else: where a study's files and runs are.

- the one tracking-URI resolver and a fast check that the store answers: the driver
  (study.config) and every reader (load_study, `nctune ui`) resolve URIs here, so a study is read
  from exactly the store it was written to;
- the folders under the storage root (`<root>/studies/<name>/`, its `study.json`, its report);
- the `nctune.*` MLflow tag names every writer sets and every reader reads;
- `retry`, the one back-off policy every MLflow write goes through, and `log_to_parent`, the
  writer the reports use.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from analysis.errors import InputError

T = TypeVar("T")
log = logging.getLogger(__name__)

SQLITE = "sqlite:///"
DEFAULT_ROOT = "nctune-runs"
STATE_FILE = "study.json"  # a study's folder: study.json, config.yaml, report/

# The nctune.* tags: on the parent run (one per study) and each child run (one per trial).
TAG_ROLE = "nctune.role"  # "study" or "trial"
TAG_STUDY = "nctune.study"
TAG_TRIAL_ID = "nctune.trial_id"  # also the Optuna trial's user attribute
TAG_TRIAL_INDEX = "nctune.trial_index"
TAG_STATUS = "nctune.status"  # completed, diverged, failed, stopped (running while it runs)
TAG_ERROR = "nctune.error"
TAG_SEARCHED = "nctune.searched"
TAG_SAMPLER = "nctune.sampler"
TAG_METRIC = "nctune.metric"
TAG_MODE = "nctune.mode"
TAG_CODE_VERSION = "nctune.code_version"
TAG_OPTUNA_STUDY = "nctune.optuna_study"
TAG_OPTUNA_STORAGE = "nctune.optuna_storage"
TAG_QUESTION = "nctune.question"
TAG_KIND = "nctune.kind"  # "zoo" for a probe of models nctune did not train
TAG_PROBE_PREFIX = "nctune.probe."  # + probe name: its settings (parent), its status (child)
TAG_NOTE = "nctune.note"  # Optuna user attribute: why a trial was failed after a resume
ROLE_STUDY, ROLE_TRIAL = "study", "trial"


def studies_dir(root: Path | str) -> Path:
    """`<root>/studies`, absolute: every study's folder is in it."""
    return Path(root).expanduser().resolve() / "studies"


def study_dir(root: Path | str, name: str) -> Path:
    """`<root>/studies/<name>`: study.json, config.yaml and report/."""
    return studies_dir(root) / name


def report_dir(root: Path | str, name: str, probe: str | None = None) -> Path:
    """`<root>/studies/<name>/report` (a probe's: `.../report/probe-<probe>`)."""
    folder = study_dir(root, name) / "report"
    return folder / f"probe-{probe}" if probe else folder


def resolve_tracking_uri(uri: str | None = None, root: Path | str = DEFAULT_ROOT) -> str:
    """The tracking URI to use: `uri`, else $MLFLOW_TRACKING_URI, else `<root>/mlflow.db`.

    A relative sqlite path is made absolute against the current folder: trials chdir into their
    own folders and Ray jobs run elsewhere, so `sqlite:///runs.db` must mean one file for all.

    Args:
        uri: the configured URI (None: not configured).
        root: the storage root whose `mlflow.db` is the default store.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        return f"{SQLITE}{Path(root).expanduser().resolve() / 'mlflow.db'}"
    if chosen.startswith(SQLITE) and not chosen.startswith(SQLITE + "/"):
        return SQLITE + str(Path(chosen[len(SQLITE):]).resolve())
    return chosen


def check_tracking_uri(uri: str, *, must_exist: bool = False, timeout_s: float = 3.0) -> None:
    """Fail fast with an InputError when the store behind `uri` cannot be reached.

    MLflow's REST client retries for minutes against a dead server, and its sqlite store
    silently creates an empty database at a mistyped path; both are worse than one clear line.

    Args:
        uri: the tracking URI.
        must_exist: a local store (sqlite file, mlruns folder) must already exist, as it must
            for reading a study; a writer (a new study) may create it.
        timeout_s: how long to wait for a tracking server to answer.
    """
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme.startswith("sqlite"):
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if must_exist and (path in ("", ":memory:") or not Path(path).is_file()):
            raise InputError(
                f"tracking URI {uri!r}: no MLflow database at {path or '(no path)'!r}; "
                "pass --tracking-uri or set MLFLOW_TRACKING_URI to the store the study wrote"
            )
    elif scheme in ("http", "https"):
        probe = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(probe, timeout=timeout_s):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered; an older server may just lack /health
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputError(
                f"tracking URI {uri!r}: no MLflow server answers ({reason}); "
                "start it or pass the right --tracking-uri"
            ) from None
    elif scheme in ("", "file") and must_exist:
        path = parsed.path if scheme == "file" else uri
        if not Path(path).is_dir():
            raise InputError(f"tracking URI {uri!r}: no MLflow store folder at {path!r}")


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
    from mlflow.exceptions import MlflowException

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
    """The first line of an error message, at most 300 characters."""
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


def log_to_parent(tracking_uri: str, run_id: str, metrics: dict[str, float], folder: Path,
                  artifact_path: str) -> str:
    """A report's metrics (step 0, in batches) and its folder as artifacts of the parent run,
    through `retry`; returns '' or the error in one line (a report never fails for its log)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    now = int(time.time() * 1000)
    try:
        items = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            batch = items[i:i + 1000]
            retry(lambda batch=batch: client.log_batch(run_id, metrics=batch))  # type: ignore[misc]
        retry(lambda: client.log_artifacts(run_id, str(folder), artifact_path=artifact_path))
    except (MlflowException, OSError, TrackingUnavailable) as exc:
        return f"could not log the report to MLflow run {run_id}: {first_line(str(exc))}"
    return ""

"""A study's state: studies/NAME/study.json, its config, and its parent run in MLflow.

`nctune run` creates them once every pre-flight check has passed (study.run.preflight); `resume`,
`ls`, `show`, `ui` and `probe` find a study again through them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.crosstrial import store
from analysis.crosstrial.store import DEFAULT_ROOT
from analysis.errors import InputError
from study.run.guard import check_study_name, redact, redact_text
from study.run.tracking import (
    TrackingUnavailable,
    dump_json,
    ensure_experiment,
    log_study_start,
    retry,
)

if TYPE_CHECKING:
    from study.config import StudyConfig

__all__ = ["DEFAULT_ROOT", "STATE_FILE", "StudyState", "known_studies", "start_study",
           "study_folder"]

STATE_FILE = store.STATE_FILE


@dataclass
class StudyState:
    """What `resume`, `ls`, `show` and `probe` need to find a study again (study.json)."""

    name: str
    status: str  # running, completed, stopped, failed
    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    ray_path: str
    created: str
    num_samples: int
    metric: str
    mode: str
    finished: str | None = None
    stop_reason: str | None = None  # interrupted, tracking, incomplete, error (when stopped/failed)
    optuna_storage: str | None = None  # the Optuna RDB storage URL (study.run.optuna_store)
    dataset: dict[str, str] = field(default_factory=dict)  # the MLflow dataset input of trials
    metrics: list[str] = field(default_factory=list)  # every objective (metric = the first)
    modes: list[str] = field(default_factory=list)

    def save(self, folder: Path) -> None:
        """Atomically, readable by its owner only: the tracking URI may carry credentials."""
        tmp = folder / (STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover tmp file would keep its old mode through O_CREAT
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(self), indent=2))
        os.replace(tmp, folder / STATE_FILE)

    @classmethod
    def load(cls, folder: Path) -> StudyState:
        """Read study.json, ignoring keys a newer nctune may have added."""
        data = json.loads((folder / STATE_FILE).read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def known_studies(root: str) -> list[str]:
    """Names of the studies under `root`, sorted."""
    base = store.studies_dir(root)
    return sorted(p.parent.name for p in base.glob(f"*/{STATE_FILE}"))


def study_folder(name: str, root: str) -> Path:
    """The folder of an existing study, or one clear line naming the studies there are."""
    folder = store.study_dir(root, check_study_name(name))
    if not (folder / STATE_FILE).exists():
        raise InputError(f"study: no study '{name}' under {folder.parent}; "
                         f"known: {', '.join(known_studies(root)) or 'none'}")
    return folder


def start_study(cfg: StudyConfig, manifest: dict[str, Any],
                bank_hashes: dict[str, str]) -> tuple[StudyState, Path]:
    """Create the experiment, the parent run and the study folder, before any trial starts."""
    from study.presets import dump_config
    from study.run.optuna_store import storage_url

    uri = cfg.tracking_uri()
    optuna_url = storage_url(cfg)
    metrics, modes = cfg.search.metrics(), cfg.search.modes()
    client, exp_id = open_store(uri, cfg.tracking.experiment, artifact_root(cfg, uri))
    tags = {store.TAG_SEARCHED: ",".join(cfg.searched()), store.TAG_SAMPLER: cfg.search.sampler,
            store.TAG_METRIC: ",".join(metrics), store.TAG_MODE: ",".join(modes),
            store.TAG_CODE_VERSION: code_version(), store.TAG_OPTUNA_STUDY: cfg.name,
            store.TAG_OPTUNA_STORAGE: redact(optuna_url)}
    params = {"sampler": cfg.search.sampler, "num_samples": cfg.num_samples,
              "max_concurrent": cfg.search.max_concurrent, "metric": ",".join(metrics),
              "mode": ",".join(modes), "search_seed": cfg.search.seed,
              "searched": ",".join(cfg.searched()), "dataset": cfg.dataset.name,
              "backbone": cfg.backbone.name, "data_hash": manifest.get("content_hash", ""),
              **{f"episode_bank/{s}": h for s, h in bank_hashes.items()}}
    artifacts = {"config.yaml": redact_text(dump_config(cfg), uri),
                 "space.json": dump_json({k: v.model_dump() for k, v in cfg.space.items()}),
                 "manifest.json": dump_json({**manifest, "episode_banks": bank_hashes})}
    description = cfg.description or f"nctune study '{cfg.name}'"
    # Not retried: a retry after a half-done call would leave two parent runs.
    parent = log_study_start(client, exp_id, cfg.name, description, tags, params, artifacts)
    state = StudyState(name=cfg.name, status="running", tracking_uri=uri,
                       experiment=cfg.tracking.experiment, experiment_id=exp_id,
                       parent_run_id=parent, ray_path=cfg.ray_storage(),
                       created=dt.datetime.now().isoformat(timespec="seconds"),
                       num_samples=cfg.num_samples, metric=metrics[0], mode=modes[0],
                       metrics=metrics, modes=modes, optuna_storage=optuna_url,
                       dataset=dataset_input(cfg, manifest))
    folder = cfg.study_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(dump_config(cfg))
    state.save(folder)
    return state, folder


def dataset_input(cfg: StudyConfig, manifest: dict[str, Any]) -> dict[str, str]:
    """What every trial run shows in MLflow's Datasets panel: name, digest, source, split sizes.

    The digest is the data manifest's content hash (SHA-256 of the split arrays), cut to the 36
    characters MLflow's dataset table holds; the profile carries it whole.
    """
    full = str(manifest.get("content_hash", ""))
    counts = manifest.get("counts", {})
    root = cfg.dataset.root
    profile = {"content_hash": full, "splits": counts, "split_seed": manifest.get("split_seed"),
               "image_size": manifest.get("image_size")}
    return {"name": cfg.dataset.name, "digest": full[:36] or "unknown",
            "source_type": "local" if root else "code",
            "source": json.dumps({"uri": root} if root else
                                 {"generator": f"trainables.data ({cfg.dataset.name})"}),
            "profile": json.dumps(profile, sort_keys=True)}


def open_store(uri: str, experiment: str, artifacts: Path | None) -> tuple[Any, str]:
    """A client and the experiment id, or one clear line if the store cannot be opened."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(uri)
        return client, retry(lambda: ensure_experiment(client, experiment, artifacts))
    except (MlflowException, OSError, TrackingUnavailable) as exc:
        text = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else "", uri)
        raise InputError(f"tracking URI {redact(uri)!r}: the store cannot be opened "
                         f"({text[:300]})") from None



def artifact_root(cfg: StudyConfig, uri: str) -> Path | None:
    """Artifacts of the embedded sqlite store live beside it, not in ./mlruns of the cwd."""
    return cfg.root_dir() / "artifacts" if uri.startswith("sqlite:") else None


def code_version() -> str:
    """The git commit of this checkout, else the installed nctune version (a parent-run tag)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        if out.returncode == 0:
            return out.stdout.strip()
    except OSError:
        pass
    from importlib.metadata import version

    return version("nctune")


def mark_parent(state: StudyState, status: str, budget_s: float | None = None) -> None:
    """Set the parent run's nctune status and MLflow status (RUNNING again on a resume)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state.tracking_uri)
    run_id = state.parent_run_id
    retry(lambda: client.set_tag(run_id, store.TAG_STATUS, status), budget_s=budget_s)
    if status == "running":
        retry(lambda: client.update_run(run_id, status="RUNNING"), budget_s=budget_s)
    else:
        final = {"completed": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        retry(lambda: client.set_terminated(run_id, final), budget_s=budget_s)

"""Run and resume studies: checks first, then Tuner(with_resources(pretrain), OptunaSearch, ...).

Everything a bad config can break is checked before Ray starts or MLflow is written: the config
itself (pydantic), the data set (built once on the driver, which also warms the node's cache),
resources against this machine, and the tracking store.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from analysis.errors import InputError
from study.config import StudyConfig
from study.guard import redact, redact_text, without_credentials
from study.presets import dump_config
from study.space import fixed_values, optuna_space
from study.tracking import (
    TrackingUnavailable,
    dump_json,
    ensure_experiment,
    log_study_start,
    retry,
)
from trainables.data import DataSplits, load_splits
from trainables.evaluate import build_banks

STATE_FILE = "study.json"


@dataclass
class StudyState:
    """What `resume`, `ls` and `show` need to find a study again (studies/NAME/study.json)."""

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
        data = json.loads((folder / STATE_FILE).read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def unique_name(cfg: StudyConfig) -> StudyConfig:
    """`demo` exists already? Run as `demo-2` (and say so) rather than mixing two studies."""
    if not (cfg.study_dir() / STATE_FILE).exists():
        return cfg
    base, i = cfg.name, 2
    while (cfg.root_dir() / "studies" / f"{base}-{i}" / STATE_FILE).exists():
        i += 1
    return cfg.model_copy(update={"name": f"{base}-{i}"})


def check_resources(cfg: StudyConfig, address: str | None) -> None:
    """On a local run, a trial must fit this machine (a cluster is checked by Ray itself)."""
    if address:
        return
    cpus = os.cpu_count() or 1
    if cfg.resources.cpus_per_trial > cpus:
        raise InputError(
            f"resources.cpus_per_trial: {cfg.resources.cpus_per_trial} is more than this "
            f"machine's {cpus} CPUs; no trial could start (use at most {cpus}, or --address "
            "a cluster)"
        )
    if cfg.resources.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if cfg.resources.gpus_per_trial > max(gpus, 0) or gpus == 0:
            raise InputError(
                f"resources.gpus_per_trial: {cfg.resources.gpus_per_trial} but this machine has "
                f"{gpus} GPU(s); set it to 0 here, or run on a cluster with --address"
            )


def absolute_paths(cfg: StudyConfig) -> StudyConfig:
    """Trials chdir into their own folders: make every user path absolute on the driver."""
    if cfg.dataset.root is None:
        return cfg
    root = str(Path(cfg.dataset.root).expanduser().resolve())
    return cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"root": root})})


def prepare_data(cfg: StudyConfig) -> tuple[DataSplits, dict[str, str]]:
    """Build the data set once on the driver (bad paths fail here), and the episode banks."""
    data = load_splits(cfg.dataset)
    banks = build_banks(data.target, cfg.evaluation)
    return data, {shape: bank.hash for shape, bank in banks.items()}


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        if out.returncode == 0:
            return out.stdout.strip()
    except OSError:
        pass
    from importlib.metadata import version

    return version("nctune")


def check_tracking(uri: str) -> None:
    """The store must answer before anything starts: one clear line (credentials masked)."""
    from analysis.crosstrial.runs import check_tracking_uri

    try:  # the probe needs no credentials, and urllib cannot send those in a URL
        check_tracking_uri(without_credentials(uri))
    except InputError as exc:
        raise InputError(redact_text(str(exc), uri)) from None


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


def start_tracking(cfg: StudyConfig, data: DataSplits, bank_hashes: dict[str, str]) -> StudyState:
    """Create store, experiment and the parent run before any trial starts."""
    uri = cfg.tracking_uri()
    check_tracking(uri)
    client, exp_id = open_store(uri, cfg.tracking.experiment, artifact_root(cfg, uri))
    tags = {"nctune.searched": ",".join(cfg.searched()), "nctune.sampler": cfg.search.sampler,
            "nctune.metric": cfg.search.metric, "nctune.mode": cfg.search.mode,
            "nctune.code_version": code_version()}
    params = {"sampler": cfg.search.sampler, "num_samples": cfg.num_samples,
              "max_concurrent": cfg.search.max_concurrent, "metric": cfg.search.metric,
              "mode": cfg.search.mode, "search_seed": cfg.search.seed,
              "searched": ",".join(cfg.searched()), "dataset": cfg.dataset.name,
              "backbone": cfg.backbone.name, "data_hash": data.manifest.get("content_hash", ""),
              **{f"episode_bank/{s}": h for s, h in bank_hashes.items()}}
    artifacts = {"config.yaml": redact_text(dump_config(cfg), uri),
                 "space.json": dump_json({k: v.model_dump() for k, v in cfg.space.items()}),
                 "manifest.json": dump_json({**data.manifest, "episode_banks": bank_hashes})}
    description = cfg.description or f"nctune study '{cfg.name}'"
    # Not retried: a retry after a half-done call would leave two parent runs.
    parent = log_study_start(client, exp_id, cfg.name, description, tags, params, artifacts)
    return StudyState(name=cfg.name, status="running", tracking_uri=uri,
                      experiment=cfg.tracking.experiment, experiment_id=exp_id,
                      parent_run_id=parent, ray_path=cfg.ray_storage(),
                      created=dt.datetime.now().isoformat(timespec="seconds"),
                      num_samples=cfg.num_samples, metric=cfg.search.metric,
                      mode=cfg.search.mode)


def artifact_root(cfg: StudyConfig, uri: str) -> Path | None:
    """Artifacts of the embedded sqlite store live beside it, not in ./mlruns of the cwd."""
    return cfg.root_dir() / "artifacts" if uri.startswith("sqlite:") else None


def write_study_files(cfg: StudyConfig, state: StudyState) -> Path:
    folder = cfg.study_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(dump_config(cfg))
    state.save(folder)
    return folder


def base_param_space(cfg: StudyConfig) -> dict[str, Any]:
    """Constant trial keys (every flat key not searched), fixed specs applied."""
    flat = cfg.trial_config().flat()
    flat.update(fixed_values(cfg.space))
    for key in optuna_space(cfg.space):
        flat.pop(key, None)
    return flat

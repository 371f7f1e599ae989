"""Every check that can fail before Ray starts, in the order `nctune run` makes them.

A bad config, a trial that cannot fit this machine, an unreachable or locked-out tracking store,
a data set that does not load: each is one clear line (credentials masked), exit status 2, and
nothing started or half-written. Only once all of them pass does study.run.state write anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from analysis.crosstrial import store
from analysis.errors import InputError
from study.config import StudyConfig
from study.presets import read_preset
from study.run.guard import redact_text, without_credentials
from study.run.optuna_store import SQLITE, check_existing, open_storage, storage_url
from study.run.progress import quiet_libraries, say
from study.run.state import STATE_FILE, StudyState
from study.run.tracking import tracking_defaults
from study.space import optuna_space
from trainables.data import DataSplits, load_splits
from trainables.evaluate import build_banks


@dataclass(frozen=True)
class Ready:
    """A new study that passed every check: its final config, its data and episode banks."""

    cfg: StudyConfig
    data: DataSplits
    bank_hashes: dict[str, str]


def check_new_study(cfg: StudyConfig, address: str | None) -> Ready:
    """Name, paths, resources, tracking store, data set: in that order, each failing fast."""
    cfg = absolute_paths(unique_name(cfg))
    check_resources(cfg, address)
    quiet_libraries()
    tracking_defaults()
    check_tracking(cfg.tracking_uri())
    check_optuna(cfg)
    say(f"Preparing data set '{cfg.dataset.name}' ...")
    data, bank_hashes = prepare_data(cfg)
    return Ready(cfg, data, bank_hashes)


def check_resumed_study(folder: Path, state: StudyState) -> StudyConfig:
    """A stopped study's saved config, once its tracking store answers again."""
    cfg = StudyConfig.model_validate(read_preset(str(folder / "config.yaml")))
    quiet_libraries()
    tracking_defaults()
    check_tracking(state.tracking_uri)
    if state.optuna_storage:
        open_storage(state.optuna_storage)
    return cfg


def unique_name(cfg: StudyConfig) -> StudyConfig:
    """`demo` exists already? Run as `demo-2` (and say so) rather than mixing two studies."""
    if not (cfg.study_dir() / STATE_FILE).exists():
        return cfg
    base, i = cfg.name, 2
    while (store.study_dir(cfg.root_dir(), f"{base}-{i}") / STATE_FILE).exists():
        i += 1
    say(f"A study named '{base}' exists already; this one is '{base}-{i}'.")
    return cfg.model_copy(update={"name": f"{base}-{i}"})


def absolute_paths(cfg: StudyConfig) -> StudyConfig:
    """Trials chdir into their own folders: make every user path absolute on the driver."""
    if cfg.dataset.root is None:
        return cfg
    root = str(Path(cfg.dataset.root).expanduser().resolve())
    return cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"root": root})})


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


def check_tracking(uri: str) -> None:
    """The store must answer before anything starts: one clear line (credentials masked)."""
    from analysis.crosstrial.store import check_tracking_uri

    try:  # the probe needs no credentials, and urllib cannot send those in a URL
        check_tracking_uri(without_credentials(uri))
    except InputError as exc:
        raise InputError(redact_text(str(exc), uri)) from None


def check_optuna(cfg: StudyConfig) -> None:
    """The Optuna storage opens (reachable, password right) and holds no clashing study.

    A sqlite file that does not exist yet holds no study to clash with: opening it would create
    it (and its folder) before the data set's checks have run, so only its folder's
    writability is checked here and study.run.tuner creates the file once every check has passed.
    """
    url = storage_url(cfg)
    if url.startswith(SQLITE) and not Path(url[len(SQLITE):]).exists():
        check_writable(Path(url[len(SQLITE):]).parent, "search.storage")
        return
    storage = open_storage(url)
    check_existing(storage, cfg.name, optuna_space(cfg.space), cfg.search.modes(), url)


def check_writable(folder: Path, field: str) -> None:
    """`folder` exists writable, or can be made under its nearest existing ancestor."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{field}: cannot create {str(folder)!r}: {str(existing)!r} is not a "
                         "writable folder; choose a storage path this user can write")


def prepare_data(cfg: StudyConfig) -> tuple[DataSplits, dict[str, str]]:
    """Build the data set once on the driver (bad paths fail here), and the episode banks."""
    data = load_splits(cfg.dataset)
    banks = build_banks(data.target, cfg.evaluation)
    return data, {shape: bank.hash for shape, bank in banks.items()}

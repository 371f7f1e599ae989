"""Each study's Optuna study, persisted in an Optuna RDB storage that users open themselves.

`optuna.load_study(study_name=NAME, storage=URL)` and optuna-dashboard read it: every trial's
parameters, its final value(s), one intermediate value per evaluated epoch, and the user
attribute `nctune.trial_id` that is also the tag of the trial's MLflow run. The storage is
`search.storage` (e.g. a team's `postgresql://user:pass@host/optuna`), else a sqlite file
`optuna.db` beside the MLflow store (or under storage.root when MLflow is a server).

The searcher itself (study.run.tuner.StudySearch) asks and tells through this storage, and Ray Tune
pickles it with the experiment; study.run.tuner reconciles the two after a resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution

from analysis.crosstrial import store
from analysis.errors import InputError
from study.run.guard import redact, redact_text

if TYPE_CHECKING:
    from study.config import StudyConfig

SQLITE = "sqlite:///"
# SQLAlchemy's plain `postgresql://` means psycopg2; nctune ships psycopg (version 3).
DRIVERS = {"postgresql://": "postgresql+psycopg://", "postgres://": "postgresql+psycopg://"}
CONNECT_TIMEOUT_S = 5
TRIAL_ID_ATTR = store.TAG_TRIAL_ID


def storage_url(cfg: StudyConfig) -> str:
    """The Optuna storage URL of a study: search.storage, else sqlite beside the MLflow store."""
    if cfg.search.storage:
        url = cfg.search.storage
        for plain, with_driver in DRIVERS.items():
            if url.startswith(plain):
                url = with_driver + url[len(plain):]
        if url.startswith(SQLITE) and not url.startswith(SQLITE + "/"):
            url = SQLITE + str(Path(url[len(SQLITE):]).resolve())
        return url
    tracking = cfg.tracking_uri()
    if tracking.startswith(SQLITE):
        return f"{SQLITE}{Path(tracking[len(SQLITE):]).parent / 'optuna.db'}"
    return f"{SQLITE}{cfg.root_dir() / 'optuna.db'}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage, or one clear line (credentials masked) if it cannot be opened."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if url.startswith(SQLITE):
        Path(url[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # SQLAlchemy and driver errors have no common base worth naming
        raise InputError(f"search.storage: the Optuna storage {redact(url)!r} cannot be opened "
                         f"({reason(exc, url)})") from None


def reason(exc: BaseException, url: str) -> str:
    """The driver's own words for a failed connection, one line, credentials masked."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = next((ln for ln in lines if "authentication failed" in ln), lines[0] if lines else "")
    return redact_text(text, url)[:300] or type(exc).__name__


def directions(modes: list[str]) -> list[optuna.study.StudyDirection]:
    """Optuna directions for nctune modes ('max' / 'min')."""
    return [optuna.study.StudyDirection.MAXIMIZE if m == "max"
            else optuna.study.StudyDirection.MINIMIZE for m in modes]


def check_existing(storage: optuna.storages.BaseStorage, name: str,
                   space: dict[str, BaseDistribution], modes: list[str], url: str) -> None:
    """An Optuna study of this name may already exist there only with this space and goal.

    Trials of a different space or direction would mix into the sampler's history and make
    `optuna.load_study` show two experiments as one; say exactly what differs.
    """
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return
    where = f"the Optuna study '{name}' in {redact(url)}"
    theirs = [d.name.lower() for d in storage.get_study_directions(study_id)]
    ours = [d.name.lower() for d in directions(modes)]
    if theirs != ours:
        raise InputError(f"search.mode: {where} exists already and {'/'.join(theirs)}s; this "
                         f"study would {'/'.join(ours)}; pick another --name or storage")
    seen: dict[str, BaseDistribution] = {}
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        for key, dist in trial.distributions.items():
            seen.setdefault(key, dist)
    differs = describe_difference(seen, space)
    if differs:
        raise InputError(f"space: {where} exists already with a different search space "
                         f"({differs}); pick another --name or storage")


def describe_difference(theirs: dict[str, BaseDistribution],
                        ours: dict[str, BaseDistribution]) -> str:
    """`weight_decay: FloatDistribution(...) there, ... here; dropout only there`, or ''."""
    if not theirs:
        return ""  # an empty study (no trial yet) constrains nothing
    parts = []
    for key in sorted(set(theirs) | set(ours)):
        if key not in ours:
            parts.append(f"{key} only there")
        elif key not in theirs:
            parts.append(f"{key} only here")
        elif theirs[key] != ours[key]:
            parts.append(f"{key}: {theirs[key]!r} there, {ours[key]!r} here")
    return "; ".join(parts)


def mark_orphans(study: optuna.Study, known: set[int]) -> list[int]:
    """Fail the RUNNING trials the restored searcher never heard of; returns their numbers.

    Tune's snapshot can predate the driver's death by seconds: a trial proposed after it was
    recorded in the storage, and the restored searcher proposes that configuration again as a
    new trial. Optuna cannot delete a trial, so the orphan is failed and says why.
    """
    storage = study._storage
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial._trial_id in known:
            continue
        storage.set_trial_user_attr(trial._trial_id, store.TAG_NOTE,
                                    "proposed before the driver was killed; proposed again "
                                    "as a new trial after the resume")
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        failed.append(trial.number)
    return failed

"""Load one study from MLflow into tidy pandas frames.

The layout is the one `study.run.tracking` writes (see the contract): a parent run per study tagged
`nctune.role=study`, a nested child run per trial, params = the flat trial config (as strings),
metrics with step = epoch. Nothing here writes to the store.

Frames of a `StudyRuns`:
    trials   one row per trial: meta (trial_index, run_id, status, ...), flags, params
    history  one row per (trial, epoch): meta + one column per metric (NaN where not logged)
    final    one row per trial at its final evaluated epoch: meta, flags, params, metrics

Failed, diverged, stopped and incomplete trials are kept and flagged; `usable` says which trials
the cross-trial analysis uses and `note` says why the others are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import contract as names
from analysis.contract import describe  # noqa: F401  (re-exported: the one labeller)
from analysis.crosstrial import store
from analysis.crosstrial.history_read import read_histories
from analysis.crosstrial.store import check_tracking_uri, resolve_tracking_uri
from analysis.errors import InputError

DEFAULT_EXPERIMENT = "nctune"
# Metric whose steps define "an epoch was trained" and whose non-finite values mean divergence.
TRAIN_METRIC = names.TRAIN_LOSS
# Metrics that exist only at evaluation epochs; the final row is the last epoch that has one.
EVAL_METRIC = names.CDNV_TARGET
USABLE_STATUSES = ("completed", "stopped")
META = ["trial_index", "run_id", "run_name", "trial_id", "status"]
# MLflow's SQL stores replace +/-inf by +/-max float64; map them back so divergence shows.
_INF_SENTINEL = 1e308
_MLFLOW_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "stopped"}


@dataclass(frozen=True)
class StudyRuns:
    """One study as loaded from MLflow.

    Attributes:
        name: the study name (parent run name and `nctune.study` tag).
        tracking_uri: where it was read from.
        experiment: MLflow experiment name.
        parent_run_id: id of the study's parent run (reports are logged there).
        tags: the parent run's tags.
        searched: flat config keys the study searched (tag `nctune.searched`, else the params
            that vary across trials).
        trials: one row per trial (see module docstring).
        history: one row per (trial, epoch).
        final: one row per trial at its final evaluated epoch.
        problems: plain-language notes on trials that are flagged or left out.
        space: the parent run's space.json ({key: {"type": ..., "low": ..., ...}}), {} if none.
    """

    name: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    tags: dict[str, str]
    searched: list[str]
    trials: pd.DataFrame
    history: pd.DataFrame
    final: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    space: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def usable(self) -> pd.DataFrame:
        """Final rows of the trials the cross-trial analysis uses."""
        return self.final[self.final["usable"]].reset_index(drop=True)

    @property
    def usable_history(self) -> pd.DataFrame:
        """(trial, epoch) rows of the usable trials."""
        keep = set(self.usable["trial_index"])
        return self.history[self.history["trial_index"].isin(keep)].reset_index(drop=True)

    @property
    def params(self) -> list[str]:
        """Param columns (the flat trial config keys) present in `trials`."""
        return [c for c in self.trials.columns if c not in META and c not in _FLAG_COLUMNS]


_FLAG_COLUMNS = [
    "error", "planned_epochs", "last_epoch", "final_epoch", "eval_epochs", "missing_epochs",
    "diverged", "incomplete", "usable", "note",
]


def load_study(name: str, tracking_uri: str | None = None,
               experiment: str | None = None) -> StudyRuns:
    """Read study `name` from MLflow.

    Args:
        name: study name (the parent run's `nctune.study` tag).
        tracking_uri: any MLflow tracking URI; default `resolve_tracking_uri()`.
        experiment: experiment name; default "nctune".

    Raises:
        InputError: unreachable store, unknown experiment or unknown study.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri, must_exist=True)
    experiment = experiment or DEFAULT_EXPERIMENT
    client = MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            known = sorted(e.name for e in client.search_experiments())
            raise InputError(
                f"experiment {experiment!r} not found at {uri}; experiments there: {known}"
            )
        parents = _search_all(
            client, exp.experiment_id,
            f"tags.`{store.TAG_ROLE}` = '{store.ROLE_STUDY}' and "
            f"tags.`{store.TAG_STUDY}` = '{_quote(name)}'",
        )
        if not parents:
            known = sorted({r.data.tags.get(store.TAG_STUDY, r.info.run_name) for r in _search_all(
                client, exp.experiment_id, f"tags.`{store.TAG_ROLE}` = '{store.ROLE_STUDY}'")})
            raise InputError(
                f"no study named {name!r} in experiment {experiment!r} at {uri}; "
                f"studies there: {known or 'none'}"
            )
        # A study resumed under the same name reuses its parent; if a rerun made a second one,
        # the newest is the one the user means.
        parent = max(parents, key=lambda r: r.info.start_time or 0)
        children = _search_all(client, exp.experiment_id,
                               f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        points = read_histories(client, uri, children, label=f"study {name}")
        space = _space(client, parent.info.run_id)
    except MlflowException as exc:
        raise InputError(f"tracking URI {uri!r}: MLflow could not read it: {exc}") from None

    trials, history = _frames(children, points)
    params = [c for c in trials.columns if c not in META and c not in _FLAG_COLUMNS]
    tags = dict(parent.data.tags)
    searched = _searched(tags, trials, params)
    final = _final(trials, history)
    problems = [f"trial {int(r.trial_index)} ({r.run_name}): {r.note}"
                for r in trials.itertuples() if r.note]
    if len(parents) > 1:
        problems.insert(0, f"{len(parents)} parent runs carry this study name; read the newest "
                           f"({parent.info.run_id})")
    return StudyRuns(name=name, tracking_uri=uri, experiment=experiment,
                     parent_run_id=parent.info.run_id, tags=tags, searched=searched,
                     trials=trials, history=history, final=final, problems=problems, space=space)


def _space(client: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """The searched space as the driver logged it; {} when absent or unreadable (it only
    refines how parameters are scaled, so a missing file must not stop the analysis)."""
    import json
    import tempfile

    # A progress bar for one small file is noise in `nctune show` / `ls` / `analyze`.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if "space.json" not in {f.path for f in client.list_artifacts(run_id)}:
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(run_id, "space.json", tmp)).read_text()
        space = json.loads(text)
    except Exception:  # any artifact-store trouble just means "no space"
        return {}
    return {k: v for k, v in space.items() if isinstance(v, dict)} if isinstance(space, dict) \
        else {}


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _search_all(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _values(v: np.ndarray) -> np.ndarray:
    """MLflow's +/-max-float sentinels back to +/-inf."""
    v = np.asarray(v, dtype=float).copy()
    big = np.abs(v) >= _INF_SENTINEL
    v[big] = np.copysign(np.inf, v[big])
    return v


def _frames(runs: list[Any], points: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows: list[dict[str, Any]] = []
    order = sorted(range(len(runs)), key=lambda i: runs[i].info.start_time or 0)
    for pos, i in enumerate(order):
        run = runs[i]
        tags = run.data.tags
        idx_tag = tags.get(store.TAG_TRIAL_INDEX, "")
        index = int(idx_tag) if idx_tag.lstrip("-").isdigit() else pos
        status = tags.get(store.TAG_STATUS) or _MLFLOW_STATUS.get(run.info.status, "running")
        rows.append({
            "trial_index": index, "run_id": run.info.run_id,
            "run_name": run.info.run_name or run.info.run_id[:8],
            "trial_id": tags.get(store.TAG_TRIAL_ID, ""), "status": status,
            "error": tags.get(store.TAG_ERROR, ""), **run.data.params,
        })
    trials = pd.DataFrame(rows, columns=None if rows else [*META, "error"])
    if trials["trial_index"].duplicated().any():  # hand-made runs: fall back to start order
        trials["trial_index"] = range(len(trials))
    for col in trials.columns.difference([*META, "error"]):
        trials[col] = _coerce(trials[col])
    history = _pivot(points, trials)
    trials = _flag(trials.sort_values("trial_index").reset_index(drop=True), history)
    return trials, history


def _coerce(col: pd.Series) -> pd.Series:
    """MLflow params are strings: give numbers, booleans and None back their type."""
    s = col.astype(object)
    text = s.dropna().astype(str)
    if len(text) and text.isin(["True", "False"]).all() and len(text) == len(s):
        return (s == "True").astype(bool)
    num = pd.to_numeric(s.where(s != "None"), errors="coerce").astype(float)
    if (num.notna() | s.isna() | (s == "None")).all() and num.notna().any():
        integral = not text.str.contains(r"[.eEn]", regex=True).any()  # no '.', 'e', 'nan', 'inf'
        return num.astype("int64") if integral and num.notna().all() else num
    return s


def _pivot(points: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    index_of = dict(zip(trials["run_id"], trials["trial_index"], strict=True))
    df = pd.DataFrame({"trial_index": points["run_id"].map(index_of),
                       "epoch": points["step"].astype("int64"), "key": points["key"],
                       "value": _values(points["value"].to_numpy()),
                       "timestamp": points["timestamp"].astype("int64")})
    df = df[df["trial_index"].notna()].astype({"trial_index": "int64"})
    # One value per step: a resumed trial may have logged a step twice; the later write wins.
    df = df.sort_values("timestamp", kind="stable").drop_duplicates(
        ["trial_index", "epoch", "key"], keep="last")
    wide = df.pivot(index=["trial_index", "epoch"], columns="key", values="value")
    wide.columns.name = None
    wide = wide.reset_index().sort_values(["trial_index", "epoch"], kind="stable")
    meta = trials[["trial_index", "run_id", "status"]]
    return meta.merge(wide, on="trial_index", how="inner").reset_index(drop=True)


def _flag(trials: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    flags: list[dict[str, Any]] = []
    by_trial = dict(iter(history.groupby("trial_index", sort=False)))
    for t in trials.itertuples():
        h = by_trial.get(t.trial_index, history.iloc[:0])
        planned = getattr(t, "epochs", None)
        planned = int(planned) if planned is not None and not pd.isna(planned) else None
        trained = h.loc[h[TRAIN_METRIC].notna(), "epoch"] if TRAIN_METRIC in h else h["epoch"]
        last = int(h["epoch"].max()) if len(h) else 0
        missing = sorted(set(range(1, last + 1)) - set(trained.astype(int)))
        eval_cols = [c for c in h.columns if c == EVAL_METRIC or
                     names.is_fewshot_acc(c)]
        evaluated = (h.loc[h[eval_cols].notna().any(axis=1), "epoch"] if eval_cols
                     else h["epoch"][:0])
        bad_loss = h.loc[~np.isfinite(h[TRAIN_METRIC].astype(float)) & h[TRAIN_METRIC].notna(),
                         "epoch"] if TRAIN_METRIC in h else h["epoch"][:0]
        diverged = t.status == "diverged" or len(bad_loss) > 0
        final = int(evaluated.max()) if len(evaluated) else None
        notes: list[str] = []
        if t.status not in USABLE_STATUSES:
            notes.append(f"status {t.status}" + (f": {t.error}" if t.error else ""))
        if len(bad_loss):
            notes.append(f"non-finite training loss from epoch {int(bad_loss.min())}")
        if final is None:
            notes.append("no evaluation metrics logged")
        if missing:
            notes.append(f"missing epochs {_ranges(missing)}")
        if planned is not None and last < planned and t.status in USABLE_STATUSES:
            notes.append(f"ran {last} of {planned} planned epochs")
        usable = t.status in USABLE_STATUSES and not diverged and final is not None
        flags.append({
            "planned_epochs": planned, "last_epoch": last, "final_epoch": final,
            "eval_epochs": len(evaluated), "missing_epochs": _ranges(missing),
            "diverged": diverged, "incomplete": planned is not None and last < planned,
            "usable": usable, "note": "; ".join(dict.fromkeys(notes)),
        })
    flag_df = pd.DataFrame(flags, columns=_FLAG_COLUMNS[1:], index=trials.index)
    flag_df["final_epoch"] = flag_df["final_epoch"].astype(float)  # NaN: never evaluated
    params = [c for c in trials.columns if c not in META and c != "error"]
    return pd.concat([trials[[*META, "error"]], flag_df, trials[params]], axis=1)


def _ranges(steps: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    runs: list[list[int]] = []
    for s in steps:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _final(trials: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Each trial's row at its final evaluated epoch (metrics NaN where it has none)."""
    metrics = history.drop(columns=["run_id", "status"])
    keys = trials[["trial_index", "final_epoch"]].rename(columns={"final_epoch": "epoch"})
    metrics = metrics.astype({"epoch": float})
    at_final = keys.merge(metrics, on=["trial_index", "epoch"], how="left")
    return trials.merge(at_final, on="trial_index", how="left").reset_index(drop=True)


def _searched(tags: dict[str, str], trials: pd.DataFrame, params: list[str]) -> list[str]:
    tag = tags.get(store.TAG_SEARCHED, "")
    if tag:
        return [k.strip() for k in tag.split(",") if k.strip() in params]
    # No tag: take what varies across trials, except replication seeds.
    return [p for p in params if not p.endswith("seed")
            and trials[p].astype(str).nunique(dropna=False) > 1]

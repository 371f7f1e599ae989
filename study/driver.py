"""What `nctune run` and `nctune resume` do, start to finish, on the driver."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from analysis.errors import InputError
from study.config import StudyConfig
from study.presets import read_preset
from study.run import (
    STATE_FILE,
    StudyState,
    absolute_paths,
    check_resources,
    prepare_data,
    start_tracking,
    unique_name,
    write_study_files,
)


def say(text: str = "") -> None:
    print(text, flush=True)


def quiet_libraries() -> None:
    """MLflow's schema-creation INFO lines mean nothing to a user starting a study."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def init_ray(address: str | None) -> None:
    """Join `address` (or $RAY_ADDRESS); else start a local Ray bound to 127.0.0.1, no dashboard."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 configure_logging=True, logging_level=logging.WARNING)


def run_study(cfg: StudyConfig, *, address: str | None = None, report: bool = True) -> StudyState:
    """Check everything, create the parent run, run the Tuner, summarise, write the report."""
    from study.tuner import build_tuner

    renamed = unique_name(cfg)
    if renamed.name != cfg.name:
        say(f"A study named '{cfg.name}' exists already; this one is '{renamed.name}'.")
    cfg = absolute_paths(renamed)
    check_resources(cfg, address)
    quiet_libraries()
    say(f"Preparing data set '{cfg.dataset.name}' ...")
    data, bank_hashes = prepare_data(cfg)
    state = start_tracking(cfg, data, bank_hashes)
    folder = write_study_files(cfg, state)
    say(header(cfg, data.manifest, folder, state))
    init_ray(address)
    return execute(build_tuner(cfg, state), cfg, state, folder, report)


def resume_study(name: str, root: str, *, address: str | None = None,
                 report: bool = True) -> StudyState:
    """Continue a study from its saved Tune state: same runs, no duplicated trials or steps."""
    from study.tuner import can_restore, restore_tuner

    folder = Path(root).expanduser().resolve() / "studies" / name
    if not (folder / STATE_FILE).exists():
        raise InputError(f"study: no study '{name}' under {folder.parent}; "
                         f"known: {', '.join(known_studies(root)) or 'none'}")
    state = StudyState.load(folder)
    cfg = StudyConfig.model_validate(read_preset(str(folder / "config.yaml")))
    if not can_restore(state):
        raise InputError(f"study '{name}': no Tune state under {state.ray_path}/{name} to "
                         "resume from (did it start any trial?)")
    say(f"Resuming study '{name}' ({state.num_samples} trials) from {state.ray_path}/{name}")
    quiet_libraries()
    mark_parent(state, "running")
    init_ray(address)
    return execute(restore_tuner(cfg, state), cfg, state, folder, report)


def execute(tuner: Any, cfg: StudyConfig, state: StudyState, folder: Path,
            report: bool) -> StudyState:
    results = tuner.fit()
    # Ended trials: terminated (completed, diverged, early-stopped) or errored for good.
    complete = results.num_terminated + results.num_errors >= state.num_samples
    state.status = "completed" if complete else "stopped"
    state.finished = dt.datetime.now().isoformat(timespec="seconds")
    state.save(folder)
    mark_parent(state, state.status)
    summarize(state, folder)
    if not complete:
        say(f"\nThe study stopped before all trials finished. Resume it with:\n"
            f"  nctune resume {state.name}")
    elif report:
        write_report(state, folder)
    return state


def mark_parent(state: StudyState, status: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state.tracking_uri)
    client.set_tag(state.parent_run_id, "nctune.status", status)
    if status == "running":
        client.update_run(state.parent_run_id, status="RUNNING")
    else:
        client.set_terminated(state.parent_run_id,
                              "FINISHED" if status == "completed" else "KILLED")


def describe_data(name: str, manifest: dict[str, Any]) -> str:
    """`glyphs: 100 source classes (20 train + 10 test images each), 60 target (20 each)`."""
    counts = manifest.get("counts", {})
    try:
        tr, te, tg = (counts[s] for s in ("source_train", "source_test", "target"))
        return (f"{name}: {tr['classes']} source classes ({tr['per_class']} train + "
                f"{te['per_class']} test images each), {tg['classes']} target classes "
                f"({tg['per_class']} images each)")
    except (KeyError, TypeError):
        return name


def header(cfg: StudyConfig, manifest: dict[str, Any], folder: Path, state: StudyState) -> str:
    return "\n".join([
        f"Study '{cfg.name}': {state.num_samples} trials, {cfg.search.sampler} sampler, "
        f"{cfg.search.max_concurrent} at a time, {cfg.resources.cpus_per_trial:g} CPU "
        f"+ {cfg.resources.gpus_per_trial:g} GPU each",
        f"  searching {', '.join(cfg.searched())}; maximising" if cfg.search.mode == "max"
        else f"  searching {', '.join(cfg.searched())}; minimising",
        f"  {cfg.search.metric}",
        f"  data: {describe_data(cfg.dataset.name, manifest)}",
        f"  study folder: {folder}",
        f"  MLflow: {redact(state.tracking_uri)} (experiment '{state.experiment}')",
        f"  Ray results: {state.ray_path}/{cfg.name}",
    ])


def summarize(state: StudyState, folder: Path) -> None:
    from analysis.runs import load_study
    from study.summary import best_trial, trials_table

    study = load_study(state.name, state.tracking_uri, state.experiment)
    say("\n" + trials_table(study, state.metric))
    best = best_trial(study, state.metric, state.mode)
    if best:
        say(f"\nBest: {best[0]} with {state.metric} = {best[1]:.4f}")
    for problem in study.problems:
        say(f"  note: {problem}")
    say("\nNext:")
    say(f"  nctune show {state.name}          # this table again")
    say(f"  nctune analyze {state.name}       # does collapse predict transfer? (HTML report)")
    say(f"  mlflow ui --backend-store-uri {redact(state.tracking_uri)} --host 127.0.0.1")


def write_report(state: StudyState, folder: Path) -> None:
    try:
        from analysis.report import write_report as _write
    except ImportError:  # pragma: no cover - the analysis package ships with nctune
        return
    try:
        path = _write(state.name, state.tracking_uri, folder / "report", fmt="html",
                      experiment=state.experiment)
        say(f"  report: {path}")
    except InputError as exc:
        say(f"  no report: {exc}")


def known_studies(root: str) -> list[str]:
    base = Path(root).expanduser().resolve() / "studies"
    return sorted(p.parent.name for p in base.glob(f"*/{STATE_FILE}"))


def redact(uri: str) -> str:
    """Hide credentials in URIs before printing (user:password@host -> ***@host)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))

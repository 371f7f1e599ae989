"""What `nctune run` and `nctune resume` do, start to finish, on the driver.

Read top to bottom, each step in its own module, in the order it runs:
    study.run.preflight  every check that can fail before Ray starts (config, resources,
                         tracking, data)
    study.run.state      study.json, the study folder and the MLflow parent run
    study.run.tuner      Ray and the Tuner (OptunaSearch, the MLflow and progress callbacks)
    execute() below      the run loop and how it ends
    study.run.summary    the trials table, the best trial, the report, what to do next

A study ends in one of three ways, each leaving MLflow and study.json consistent: completed
(every trial ended), stopped (Ctrl-C, SIGTERM, a tracking store down past the retry budget:
resumable, and the last line printed says how), or failed (a bug in the driver: resumable too).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune

from study.config import StudyConfig
from study.run.guard import GracefulStop, StudyLock, redact_text
from study.run.preflight import check_new_study, check_resumed_study
from study.run.progress import header, say
from study.run.state import StudyState, mark_parent, start_study, study_folder
from study.run.summary import resume_command, say_next, summarize, write_report
from study.run.tracking import TrackingUnavailable
from study.run.tuner import build_tuner, can_restore, init_ray, restore_tuner


def run_study(cfg: StudyConfig, *, address: str | None = None, report: bool = True,
              dashboard: bool = False,
              callbacks: Sequence[tune.Callback] = ()) -> StudyState:
    """Check everything, create the parent run, run the Tuner, summarise, write the report.

    Args:
        cfg: the validated study config.
        address: a Ray cluster to join (default: $RAY_ADDRESS, else a local Ray).
        report: write the analysis report at the end.
        dashboard: start the local Ray with its dashboard (on 127.0.0.1).
        callbacks: extra Ray Tune callbacks, run after nctune's own (e.g. a benchmark's probe).
    """
    ready = check_new_study(cfg, address)
    state, folder = start_study(ready.cfg, ready.data.manifest, ready.bank_hashes)
    with StudyLock(folder, state.name):
        say(header(ready.cfg, ready.data.manifest, folder, state, address, dashboard))
        try:
            init_ray(address, dashboard=dashboard)  # seconds, before our handler is in place
            tuner = build_tuner(ready.cfg, state, callbacks)
        except KeyboardInterrupt:
            return stopped(state, folder, "interrupted")
        return execute(tuner, state, folder, report)


def resume_study(name: str, root: str, *, address: str | None = None, report: bool = True,
                 dashboard: bool = False) -> StudyState:
    """Continue a study from its saved Tune state: same runs, no duplicated trials or steps."""
    folder = study_folder(name, root)
    with StudyLock(folder, name):
        state = StudyState.load(folder)
        if state.status == "completed":
            say(f"Study '{name}' completed already ({state.finished}); nothing to resume.")
            return state
        cfg = check_resumed_study(folder, state)
        restorable = can_restore(state)
        say(f"Resuming study '{name}' ({state.num_samples} trials) from "
            f"{state.ray_path}/{name}" + ("" if restorable else ": no trial had started yet"))
        mark_parent(state, "running")
        state.status, state.stop_reason = "running", None
        state.save(folder)
        try:
            init_ray(address, dashboard=dashboard)
            tuner = (restore_tuner(cfg, state) if restorable
                     else build_tuner(cfg, state, resumed=True))
        except KeyboardInterrupt:
            return stopped(state, folder, "interrupted")
        return execute(tuner, state, folder, report)


def execute(tuner: Any, state: StudyState, folder: Path, report: bool) -> StudyState:
    """Run the Tuner; however it ends, study.json and the parent run say how."""
    stop = GracefulStop()
    try:
        with stop:
            results = tuner.fit()
    except KeyboardInterrupt:
        return stopped(state, folder, "interrupted")
    except Exception as exc:
        cause = find_cause(exc, TrackingUnavailable)
        if cause is None:
            end(state, folder, "failed", "error")
            say(f"\nThe study failed in the driver. Resume it with:\n  {resume_command(folder)}")
            raise
        why = redact_text(str(cause), state.tracking_uri)
        say(f"\nThe tracking store stopped answering: {why}")
        return stopped(state, folder, "tracking")
    # Ended trials: terminated (completed, diverged, early-stopped) or errored for good.
    if results.num_terminated + results.num_errors < state.num_samples:
        return stopped(state, folder, "interrupted" if stop.received else "incomplete")
    end(state, folder, "completed", None)
    best = summarize(state)
    if report:
        write_report(state, folder, best)
    say_next(state, folder)
    return state


def stopped(state: StudyState, folder: Path, reason: str) -> StudyState:
    """Save and say how to go on: the last line a user sees is the resume command."""
    end(state, folder, "stopped", reason)
    if reason != "tracking":
        summarize(state)
    why = {"interrupted": "it was interrupted", "tracking": "the tracking store is unreachable",
           "incomplete": "not every trial ended"}[reason]
    say(f"\nThe study stopped ({why}); its state is saved. Resume it with:\n"
        f"  {resume_command(folder)}")
    return state


def end(state: StudyState, folder: Path, status: str, reason: str | None) -> None:
    """Record how the study ended in study.json and on the parent run."""
    state.status, state.stop_reason = status, reason
    state.finished = dt.datetime.now().isoformat(timespec="seconds")
    state.save(folder)
    try:  # a store that is down stays down for this process: one quick try, no back-off
        mark_parent(state, status, budget_s=None if reason != "tracking" else 0.0)
    except TrackingUnavailable:
        say(f"  (the parent run stays RUNNING until `nctune resume {state.name}` sets it)")


def find_cause(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """`exc` or the first exception of type `kind` it was raised from (Tune wraps errors)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None

"""What `nctune run` and `nctune resume` do, start to finish, on the driver.

A study ends in one of three ways, each leaving MLflow and study.json consistent: completed
(every trial ended), stopped (Ctrl-C, SIGTERM, a tracking store down past the retry budget:
resumable, and the last line printed says how), or failed (a bug in the driver: resumable too).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from analysis.errors import InputError
from study.config import StudyConfig
from study.guard import GracefulStop, StudyLock, check_study_name, redact, redact_text
from study.presets import read_preset
from study.run import (
    STATE_FILE,
    StudyState,
    absolute_paths,
    check_resources,
    check_tracking,
    prepare_data,
    start_tracking,
    unique_name,
    write_study_files,
)
from study.tracking import TrackingUnavailable, retry

__all__ = ["init_ray", "known_studies", "redact", "resume_study", "run_study"]

DEFAULT_ROOT = "nctune-runs"
# Lines Ray Tune logs that our own output replaces (its resume hint names a Python API), and
# its complaint that a trial restored before its first report has no result file to load for
# the ResultGrid (which nctune does not read: MLflow holds the results).
TUNE_NOISE = ("Stop signal received", "Experiment has been interrupted", "Trials did not complete",
              "Failed to fetch metrics", "`Study.stop` is supposed")
NOISY_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis",
                 "ray.tune.search.optuna.optuna_search")


def say(text: str = "") -> None:
    print(text, flush=True)


class _DropTuneNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TUNE_NOISE)


def quiet_libraries() -> None:
    """Library lines that mean nothing to a user (our header says what they would have)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTuneNoise) for f in logger.filters):
            logger.addFilter(_DropTuneNoise())


def tracking_defaults() -> None:
    """Our retry() is the one back-off policy: MLflow's REST client would otherwise retry a dead
    server for ~4 minutes per call, silently, before our budget even starts."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # MLflow prints a "View run at <server URL>" line per ended run: noise, and a URL that
    # would carry credentials if the tracking URI has them.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the summary's reads


def init_ray(address: str | None, *, dashboard: bool = False) -> None:
    """Join `address` (or $RAY_ADDRESS); else start a local Ray that listens on 127.0.0.1 only,
    with token authentication on (Ray's default, never turned off here) and no dashboard unless
    asked for (then on 127.0.0.1 too)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    from ray._private import ray_constants

    # Ray warns that token authentication is on; the header says so in plain words.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    # ray.init resolves 127.0.0.1 to this machine's routable address on Linux, and its gRPC
    # servers (GCS, raylet, workers) then listen on 0.0.0.0. With ENABLE_RAY_CLUSTER off, as on
    # macOS and Windows, every one of them binds 127.0.0.1 (ray/_private/services.py).
    single_node, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        # address="local": a new Ray of our own; without it ray.init joins whatever cluster
        # `ray start` last recorded in /tmp/ray, which the user did not ask for.
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 log_to_driver=False,
                 configure_logging=True, logging_level=logging.WARNING)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = single_node


def run_study(cfg: StudyConfig, *, address: str | None = None, report: bool = True,
              dashboard: bool = False) -> StudyState:
    """Check everything, create the parent run, run the Tuner, summarise, write the report."""
    from study.tuner import build_tuner

    renamed = unique_name(cfg)
    if renamed.name != cfg.name:
        say(f"A study named '{cfg.name}' exists already; this one is '{renamed.name}'.")
    cfg = absolute_paths(renamed)
    check_resources(cfg, address)
    quiet_libraries()
    tracking_defaults()
    check_tracking(cfg.tracking_uri())
    say(f"Preparing data set '{cfg.dataset.name}' ...")
    data, bank_hashes = prepare_data(cfg)
    state = start_tracking(cfg, data, bank_hashes)
    folder = write_study_files(cfg, state)
    with StudyLock(folder, cfg.name):
        say(header(cfg, data.manifest, folder, state, address, dashboard))
        try:
            init_ray(address, dashboard=dashboard)  # seconds, before our handler is in place
            tuner = build_tuner(cfg, state)
        except KeyboardInterrupt:
            return stopped(state, folder, "interrupted")
        return execute(tuner, state, folder, report)


def resume_study(name: str, root: str, *, address: str | None = None, report: bool = True,
                 dashboard: bool = False) -> StudyState:
    """Continue a study from its saved Tune state: same runs, no duplicated trials or steps."""
    from study.tuner import build_tuner, can_restore, restore_tuner

    folder = Path(root).expanduser().resolve() / "studies" / check_study_name(name)
    if not (folder / STATE_FILE).exists():
        raise InputError(f"study: no study '{name}' under {folder.parent}; "
                         f"known: {', '.join(known_studies(root)) or 'none'}")
    with StudyLock(folder, name):
        state = StudyState.load(folder)
        if state.status == "completed":
            say(f"Study '{name}' completed already ({state.finished}); nothing to resume.")
            return state
        cfg = StudyConfig.model_validate(read_preset(str(folder / "config.yaml")))
        quiet_libraries()
        tracking_defaults()
        check_tracking(state.tracking_uri)
        restorable = can_restore(state)
        say(f"Resuming study '{name}' ({state.num_samples} trials) from "
            f"{state.ray_path}/{name}" + ("" if restorable else ": no trial had started yet"))
        mark_parent(state, "running")
        state.status, state.stop_reason = "running", None
        state.save(folder)
        try:
            init_ray(address, dashboard=dashboard)
            tuner = restore_tuner(cfg, state) if restorable else build_tuner(cfg, state)
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
    state.status, state.stop_reason = status, reason
    state.finished = dt.datetime.now().isoformat(timespec="seconds")
    state.save(folder)
    try:  # a store that is down stays down for this process: one quick try, no back-off
        mark_parent(state, status, budget_s=None if reason != "tracking" else 0.0)
    except TrackingUnavailable:
        say(f"  (the parent run stays RUNNING until `nctune resume {state.name}` sets it)")


def mark_parent(state: StudyState, status: str, budget_s: float | None = None) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state.tracking_uri)
    run_id = state.parent_run_id
    retry(lambda: client.set_tag(run_id, "nctune.status", status), budget_s=budget_s)
    if status == "running":
        retry(lambda: client.update_run(run_id, status="RUNNING"), budget_s=budget_s)
    else:
        final = {"completed": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        retry(lambda: client.set_terminated(run_id, final), budget_s=budget_s)


def find_cause(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """`exc` or the first exception of type `kind` it was raised from (Tune wraps errors)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def resume_command(folder: Path) -> str:
    root = folder.parent.parent
    cmd = f"nctune resume {folder.name}"
    if root != Path(DEFAULT_ROOT).resolve():
        cmd += f" --root {shlex.quote(str(root))}"
    return cmd


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


def describe_ray(address: str | None, dashboard: bool) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return f"the cluster at {redact(address)} (needs its token: RAY_AUTH_TOKEN)"
    return ("local, on 127.0.0.1 only, token authentication on, dashboard "
            + ("on 127.0.0.1" if dashboard else "off"))


def header(cfg: StudyConfig, manifest: dict[str, Any], folder: Path, state: StudyState,
           address: str | None = None, dashboard: bool = False) -> str:
    goal = "maximising" if cfg.search.mode == "max" else "minimising"
    return "\n".join([
        f"Study '{cfg.name}': {state.num_samples} trials, {cfg.search.sampler} sampler, "
        f"{cfg.search.max_concurrent} at a time, {cfg.resources.cpus_per_trial:g} CPU "
        f"+ {cfg.resources.gpus_per_trial:g} GPU each",
        f"  searching {', '.join(cfg.searched())}; {goal}",
        f"  {cfg.search.metric}",
        f"  data: {describe_data(cfg.dataset.name, manifest)}",
        f"  study folder: {folder}",
        f"  MLflow: {redact(state.tracking_uri)} (experiment '{state.experiment}')",
        f"  Ray results: {state.ray_path}/{cfg.name}",
        f"  Ray: {describe_ray(address, dashboard)}",
    ])


def summarize(state: StudyState) -> tuple[str, float] | None:
    """Print the trials table and the best trial (returned)."""
    from mlflow.exceptions import MlflowException

    from analysis.crosstrial.runs import load_study
    from study.summary import best_trial, trials_table

    try:
        study = load_study(state.name, state.tracking_uri, state.experiment)
    except (InputError, MlflowException) as exc:
        say(f"  (no summary: {redact_text(str(exc), state.tracking_uri)})")
        return None
    say("\n" + trials_table(study, state.metric))
    best = best_trial(study, state.metric, state.mode)
    if best:
        say(f"\nBest: {best[0]} with {state.metric} = {best[1]:.4f}")
    for problem in study.problems:
        say(f"  note: {problem}")
    return best


def say_next(state: StudyState, folder: Path) -> None:
    root = folder.parent.parent
    opt = "" if root == Path(DEFAULT_ROOT).resolve() else f" --root {shlex.quote(str(root))}"
    say("\nNext:")
    say(f"  nctune show {state.name}{opt}        # this table again")
    if (folder / "report" / "report.html").exists():
        say(f"  open {folder / 'report' / 'report.html'}   # does collapse predict transfer?")
    else:
        say(f"  nctune analyze {state.name}   # does collapse predict transfer? (HTML report)")
    say(f"  nctune ui {state.name}{opt}          # compare the trials in the MLflow UI")


def write_report(state: StudyState, folder: Path, best: tuple[str, float] | None) -> None:
    """The analysis report; its first verdict line and the best trial become the headline in
    the parent run's description (what the MLflow UI shows first)."""
    from mlflow.exceptions import MlflowException

    from analysis.crosstrial.report import analyze

    try:
        report = analyze(state.name, state.tracking_uri, folder / "report",
                         experiment=state.experiment)
    except (InputError, MlflowException) as exc:
        say(f"  no report: {redact_text(str(exc), state.tracking_uri)}")
        return
    say(f"\n{report.verdict[0]}" if report.verdict else "")
    say(f"Report: {report.path}")
    headline = [f"Best: {best[0]} with {state.metric} = {best[1]:.4f}."] if best else []
    set_headline(state, headline + report.verdict[:1])


def set_headline(state: StudyState, lines: list[str]) -> None:
    """Parent run description = the study's question + its result, in Markdown."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state.tracking_uri)
    run = client.get_run(state.parent_run_id)
    question = run.data.tags.get("nctune.question", run.data.tags.get("mlflow.note.content", ""))
    text = question + ("\n\n**Result.** " + " ".join(lines) if lines else "")
    client.set_tag(state.parent_run_id, "mlflow.note.content", text)


def known_studies(root: str) -> list[str]:
    base = Path(root).expanduser().resolve() / "studies"
    return sorted(p.parent.name for p in base.glob(f"*/{STATE_FILE}"))

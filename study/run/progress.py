"""What the terminal shows while a study runs: the header, then a compact progress line.

Ray 2.60 ignores custom progress reporters, so the line is a Tune callback. It prints at most
every `interval` seconds, and at every trial that ends:
    [01:42] 3/8 finished · 2 running (t004 ep 3/6, t005 ep 1/8) · 0 failed · 0 diverged
            · best fewshot/5w5s/ncc/acc 0.612 (t002)
Library lines that mean nothing to a user are kept off the terminal (quiet_libraries).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ray.tune import Callback

from study.run.guard import redact
from study.run.tracking import trial_error

if TYPE_CHECKING:
    from study.config import StudyConfig
    from study.run.state import StudyState

# Lines Ray Tune logs that our own output replaces (its resume hint names a Python API), and
# its complaint that a trial restored before its first report has no result file to load for
# the ResultGrid (which nctune does not read: MLflow holds the results).
TUNE_NOISE = ("Stop signal received", "Experiment has been interrupted", "Trials did not complete",
              "Failed to fetch metrics", "`Study.stop` is supposed")
NOISY_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis",
                 "ray.tune.search.optuna.optuna_search")


def say(text: str = "") -> None:
    """A line for the user, at once (the driver's output interleaves with Ray's)."""
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


def header(cfg: StudyConfig, manifest: dict[str, Any], folder: Path, state: StudyState,
           address: str | None = None, dashboard: bool = False) -> str:
    """The lines a study starts with: what is searched, on what data, and where it all goes."""
    goals = [("maximising " if mode == "max" else "minimising ") + metric
             for metric, mode in zip(cfg.search.metrics(), cfg.search.modes(), strict=True)]
    goal = ("a Pareto front of " if len(goals) > 1 else "") + " and ".join(goals)
    return "\n".join([
        f"Study '{cfg.name}': {state.num_samples} trials, {cfg.search.sampler} sampler, "
        f"{cfg.search.max_concurrent} at a time, {cfg.resources.cpus_per_trial:g} CPU "
        f"+ {cfg.resources.gpus_per_trial:g} GPU each",
        f"  searching {', '.join(cfg.searched())};",
        f"  {goal}",
        f"  data: {describe_data(cfg.dataset.name, manifest)}",
        f"  study folder: {folder}",
        f"  MLflow: {redact(state.tracking_uri)} (experiment '{state.experiment}')",
        f"  Optuna: {redact(state.optuna_storage or '')} (study '{cfg.name}')",
        f"  Ray results: {state.ray_path}/{cfg.name}",
        f"  Ray: {describe_ray(address, dashboard)}",
    ])


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
    """Which Ray the study runs on, and how it is protected."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return f"the cluster at {redact(address)} (needs its token: RAY_AUTH_TOKEN)"
    return ("local, on 127.0.0.1 only, token authentication on, dashboard "
            + ("on 127.0.0.1" if dashboard else "off"))


class ProgressPrinter(Callback):
    """What a user watching the terminal needs: counts, each running trial's epoch, the best."""

    def __init__(self, total: int, metric: str | list[str], mode: str | list[str], *,
                 interval: float = 10.0,
                 stream: TextIO | None = None,
                 label_of: Callable[[str], str] | None = None) -> None:
        self.total = total
        # Several metrics: a multi-objective search, whose line shows the Pareto set.
        self.metrics = [metric] if isinstance(metric, str) else list(metric)
        self.modes = [mode] if isinstance(mode, str) else list(mode)
        self.metric, self.mode = self.metrics[0], self.modes[0]
        self.points: dict[str, tuple[str, tuple[float, ...]]] = {}  # trial -> (label, values)
        self.interval = interval
        self.stream = stream  # None: sys.stdout at write time (the callback is pickled)
        self.start = time.monotonic()
        self.last_print = 0.0
        self.epochs: dict[str, tuple[int, int]] = {}
        self.ended: dict[str, str] = {}
        self.latest: dict[str, tuple[str, float]] = {}  # trial -> (label, latest metric value)
        self.labels: dict[str, str] = {}
        self.label_of = label_of  # the tracker's numbering, so terminal and MLflow agree

    def label(self, trial: Any) -> str:
        """A trial's short name (t001, ...): the tracker's, so the progress line and MLflow agree.
        """
        if self.label_of is not None:
            return self.label_of(trial.trial_id)
        if trial.trial_id not in self.labels:
            self.labels[trial.trial_id] = f"t{len(self.labels) + 1:03d}"
        return self.labels[trial.trial_id]

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        # Called when Tuner.fit starts, also after a resume (this object was unpickled then).
        """Tune hook when Tuner.fit starts (also after a resume): restart the clock."""
        self.start = time.monotonic()
        self.last_print = 0.0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: give the trial its label and note its epoch budget."""
        self.label(trial)
        self.epochs.setdefault(trial.trial_id, (0, int(trial.config.get("epochs", 0))))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        """Tune hook: keep the trial's epoch, latest search metric(s) and status; refresh the line.
        """
        epoch = int(result.get("epoch", 0))
        self.epochs[trial.trial_id] = (epoch, int(trial.config.get("epochs", 0)))
        value = result.get(self.metric)
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.latest[trial.trial_id] = (self.label(trial), float(value))
        values = [v for v in (result.get(m) for m in self.metrics)
                  if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(values) == len(self.metrics):
            self.points[trial.trial_id] = (self.label(trial), tuple(map(float, values)))
        status = result.get("trial_status")
        if status in ("diverged", "failed"):
            self.ended[trial.trial_id] = str(status)
        if status == "failed":
            self.write(f"  {self.label(trial)} failed: {last_line(result.get('error'))}")
        self.maybe_print(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: the trial ended; print the line at once."""
        self.ended.setdefault(trial.trial_id, "done")
        self.maybe_print(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: the trial failed; print its error's last line, then the progress line."""
        self.ended[trial.trial_id] = "failed"
        self.write(f"  {self.label(trial)} failed: {last_line(trial_error(trial))}")
        self.maybe_print(trials, force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Tune hook after each loop step: print the line if the interval has passed."""
        self.maybe_print(trials)

    def maybe_print(self, trials: list, force: bool = False) -> None:
        """Print the progress line at most every `interval` seconds (always when forced)."""
        now = time.monotonic()
        if force or now - self.last_print >= self.interval:
            self.last_print = now
            self.write(self.line(trials))

    def line(self, trials: list) -> str:
        """The one-line status: elapsed time, trials finished, running, failed and diverged, and the
        best so far."""
        running = [t for t in trials if t.status == "RUNNING" and t.trial_id not in self.ended]
        pending = sum(1 for t in trials if t.status == "PENDING")
        # After a resume, trials that ended before it are known only by their Tune status.
        ended = {t.trial_id: ("failed" if t.status == "ERROR" else "done") for t in trials
                 if t.status in ("TERMINATED", "ERROR")}
        ended.update(self.ended)
        counts = {s: sum(1 for v in ended.values() if v == s)
                  for s in ("done", "failed", "diverged")}
        finished = len(ended)
        shown = ", ".join(
            f"{self.label(t)} ep {self.epochs.get(t.trial_id, (0, 0))[0]}/"
            f"{self.epochs.get(t.trial_id, (0, 0))[1]}" for t in running[:4]
        )
        elapsed = int(time.monotonic() - self.start)
        text = (f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {finished}/{self.total} finished · "
                f"{len(running)} running" + (f" ({shown})" if shown else "") +
                (f" · {pending} starting" if pending else "") +
                f" · {counts['failed']} failed · {counts['diverged']} diverged")
        if len(self.metrics) > 1:
            front = self.pareto()
            return text + (f" · Pareto set {', '.join(front)}" if front else "")
        best = self.best()
        if best:
            text += f" · best {self.metric} {best[1]:.3f} ({best[0]})"
        return text

    def pareto(self) -> list[str]:
        """Labels of the trials no other dominates on their latest values (a multi-objective
        search has a Pareto set, not one best)."""
        import numpy as np

        from analysis.crosstrial.pareto import pareto_mask

        if not getattr(self, "points", None):
            return []
        labels, values = zip(*self.points.values(), strict=True)
        mask = pareto_mask(np.array(values), self.modes)
        return sorted(label for label, keep in zip(labels, mask, strict=True) if keep)

    def best(self) -> tuple[str, float] | None:
        """The best trial by its latest value: the same rule as the final summary's "Best"."""
        if not self.latest:
            return None
        pick = max if self.mode == "max" else min
        return pick(self.latest.values(), key=lambda item: item[1])

    def write(self, text: str) -> None:
        """Print to the configured stream (stdout by default), flushed: progress must show while Ray
        runs."""
        print(text, file=self.stream or sys.stdout, flush=True)


def last_line(text: object) -> str:
    """The line of an error trace that says what went wrong (its last), shortened."""
    lines = str(text or "").strip().splitlines()
    return lines[-1][:200] if lines else "unknown error"
